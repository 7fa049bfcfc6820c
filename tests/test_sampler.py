"""The KV-cache sampler against a cache-free reference, and its sampling filters against numpy."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M
from alignment.model.layers import EMBED_INIT_STDDEV
from alignment.jobs import generate as generate_job
from alignment.prompts.templates import ALPACA
from alignment.sampling import sampler as S
from configs.generate import get_config as generate_config
from tiny_sentencepiece import train_tiny_tokenizer

FAMILIES = ["tiny_gemma1", "tiny_gemma2", "tiny_gemma3"]
# Prompt lengths straddling the tiny sliding window (8); 20 new tokens run well past it.
PROMPT_LENGTHS = (3, 11, 6)
NEW_TOKENS = 20


@functools.partial(jax.jit, static_argnums=(0, 1))
def lively_params(cfg: M.ModelConfig, seed: int = 0):
  """Random parameters whose greedy output does not just repeat one token.

  With unit-scale tied embeddings and zero norm scales the residual stream is dominated by the
  input token, so the model echoes it; a shrunken table and random norm scales let the
  attention and MLP blocks decide the output.
  """
  params = M.init_params(cfg, jax.random.key(seed))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = []
  for (path, x), key in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      x = jax.random.normal(key, x.shape)
    elif "input_embedding" in name:  # stddev 0.03, whatever the default init's is
      x = x * (0.03 / EMBED_INIT_STDDEV)
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def random_prompts(cfg, lengths, seed=1):
  rng = np.random.default_rng(seed)
  return [rng.integers(2, cfg.vocab_size, n).tolist() for n in lengths]


def left_pad(prompts, pad=0):
  width = max(map(len, prompts))
  tokens = np.full((len(prompts), width), pad, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    mask[i, width - len(p):] = True
  return tokens, mask


def gen(cfg, params, tokens, mask, max_new=NEW_TOKENS, sampling=S.SamplingParams(), seed=0,
        stop_ids=()):
  """`generate` with logprobs on: tests share the few programs this compiles (one per mode)."""
  out = S.generate(cfg, params, tokens, mask, jax.random.key(seed), max_new, sampling,
                   stop_ids=stop_ids, return_logprobs=True)
  return np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logprobs)


def reference_greedy(cfg, params, prompts, num_new):
  """Argmax over a fresh full forward pass each step: no cache, no padding on the left.

  Rows are right-padded to one width; padding after a row's last token cannot affect it.
  """
  total = max(map(len, prompts)) + num_new
  positions = jnp.broadcast_to(jnp.arange(total), (len(prompts), total))
  mask = M.causal_mask(jnp.ones((len(prompts), total), bool))
  full = jax.jit(lambda p, t: M.forward(cfg, p, t, positions, mask)[0])
  seqs = [list(p) for p in prompts]
  logprobs = [[] for _ in prompts]
  for _ in range(num_new):
    tokens = np.zeros((len(prompts), total), np.int32)
    for row, seq in enumerate(seqs):
      tokens[row, :len(seq)] = seq
    logits = np.asarray(full(params, tokens), np.float64)
    for row, seq in enumerate(seqs):
      last = logits[row, len(seq) - 1]
      token = int(np.argmax(last))
      top = last.max()
      logprobs[row].append(last[token] - top - np.log(np.sum(np.exp(last - top))))
      seq.append(token)
  return [seq[len(p):] for seq, p in zip(seqs, prompts)], logprobs


@pytest.fixture(scope="module")
def tiny3():
  cfg = M.get_config("tiny_gemma3")
  return cfg, lively_params(cfg)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_matches_cache_free_reference(name):
  """Rows of different lengths, a padded batch (3 -> 4) and decoding past the window."""
  cfg = M.get_config(name)
  params = lively_params(cfg)
  prompts = random_prompts(cfg, PROMPT_LENGTHS)
  tokens, lengths, logprobs = gen(cfg, params, *left_pad(prompts))
  assert tokens.shape == logprobs.shape == (3, NEW_TOKENS)
  np.testing.assert_array_equal(lengths, [NEW_TOKENS] * 3)
  ref, ref_logprobs = reference_greedy(cfg, params, prompts, NEW_TOKENS)
  np.testing.assert_array_equal(tokens, ref)
  np.testing.assert_allclose(logprobs, ref_logprobs, atol=2e-4)
  # The generated ids are not trivial repeats of one token (the reference would agree anyway).
  assert len(set(tokens.ravel().tolist())) > 6


def test_right_padded_prompts_give_the_same_output(tiny3):
  cfg, params = tiny3
  prompts = random_prompts(cfg, PROMPT_LENGTHS)
  left_tokens, left_mask = left_pad(prompts)
  right_tokens, right_mask = left_tokens[:, ::-1].copy(), left_mask[:, ::-1].copy()
  for row, p in enumerate(prompts):
    right_tokens[row, :len(p)] = p
  np.testing.assert_array_equal(gen(cfg, params, left_tokens, left_mask)[0],
                                gen(cfg, params, right_tokens, right_mask)[0])


def test_stop_token_ends_row_and_pads_the_rest(tiny3):
  cfg, params = tiny3
  tokens, mask = left_pad(random_prompts(cfg, PROMPT_LENGTHS))
  free = gen(cfg, params, tokens, mask)[0]
  # Stop on a token row 0 first produces mid-way, so the row has a known place to end.
  stop = next(int(t) for i, t in enumerate(free[0]) if i >= 3 and t not in free[0, :i])
  got, lengths, logprobs = gen(cfg, params, tokens, mask, stop_ids=(stop, cfg.vocab_size + 5))
  for row in range(3):
    hits = np.flatnonzero(free[row] == stop)
    n = hits[0] + 1 if hits.size else NEW_TOKENS
    assert lengths[row] == n
    np.testing.assert_array_equal(got[row, :n], free[row, :n])
    assert (got[row, n:] == S.PAD_ID).all() and (logprobs[row, n:] == 0).all()
    assert (logprobs[row, :n] < 0).all()
  assert lengths[0] < NEW_TOKENS


def test_all_rows_stopping_at_once_still_returns_full_width(tiny3):
  cfg, params = tiny3
  tokens, mask = left_pad(random_prompts(cfg, PROMPT_LENGTHS))
  first = gen(cfg, params, tokens, mask)[0][:, 0]
  got, lengths, _ = gen(cfg, params, tokens, mask, stop_ids=tuple(first.tolist()))
  assert got.shape == (3, NEW_TOKENS)
  np.testing.assert_array_equal(lengths, [1, 1, 1])
  np.testing.assert_array_equal(got[:, 0], first)
  assert (got[:, 1:] == S.PAD_ID).all()


def test_top_k_one_equals_greedy(tiny3):
  cfg, params = tiny3
  tokens, mask = left_pad(random_prompts(cfg, PROMPT_LENGTHS))
  greedy = gen(cfg, params, tokens, mask)
  top1 = gen(cfg, params, tokens, mask, sampling=S.SamplingParams(temperature=1.3, top_k=1),
             seed=5)
  np.testing.assert_array_equal(greedy[0], top1[0])
  np.testing.assert_allclose(greedy[2], top1[2], atol=1e-6)  # model log-probs, not filtered


def test_temperature_sampling_is_reproducible_given_the_key(tiny3):
  cfg, params = tiny3
  tokens, mask = left_pad(random_prompts(cfg, PROMPT_LENGTHS))
  sampling = S.SamplingParams(temperature=1.0, top_p=0.9)
  a, b, c = (gen(cfg, params, tokens, mask, sampling=sampling, seed=s)[0] for s in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  assert (a != gen(cfg, params, tokens, mask)[0]).any()


def numpy_top_p_keep(logits, p):
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  n = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1  # smallest n with mass >= p
  return set(order[:n].tolist())


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_keeps_smallest_set_reaching_p(p):
  logits = np.random.default_rng(0).normal(size=(6, 300)).astype(np.float32) * 3
  filtered = np.asarray(S.top_p_filter(jnp.asarray(logits), p))
  for row in range(logits.shape[0]):
    kept = set(np.flatnonzero(np.isfinite(filtered[row])).tolist())
    assert kept == numpy_top_p_keep(logits[row].astype(np.float64), p)
    np.testing.assert_array_equal(filtered[row, list(kept)], logits[row, list(kept)])


def test_top_k_then_top_p_matches_numpy():
  logits = np.random.default_rng(1).normal(size=(4, 200)).astype(np.float32)
  filtered = np.asarray(S.filter_logits(jnp.asarray(logits), top_k=20, top_p=0.5))
  for row in range(4):
    top20 = np.argsort(-logits[row])[:20]
    sub = numpy_top_p_keep(logits[row, top20].astype(np.float64), 0.5)
    expected = {int(top20[i]) for i in sub}
    assert set(np.flatnonzero(np.isfinite(filtered[row])).tolist()) == expected


def test_top_k_filter_keeps_k_largest():
  logits = np.random.default_rng(2).normal(size=(3, 100)).astype(np.float32)
  filtered = np.asarray(S.top_k_filter(jnp.asarray(logits), 7))
  for row in range(3):
    assert set(np.flatnonzero(np.isfinite(filtered[row]))) == set(np.argsort(-logits[row])[:7])


def test_sampled_frequencies_follow_filtered_tempered_softmax():
  """Temperature 2, top-k 3, top-p 0.8 on 5 logits, 40k draws vs the exact distribution."""
  logits = np.array([2.0, 1.5, 1.0, 0.2, -1.0], np.float32)
  draws = 40_000
  tokens = S.choose_tokens(jnp.tile(jnp.asarray(logits), (draws, 1)), jax.random.key(0),
                           greedy=False, temperature=2.0, top_k=3, top_p=0.8)
  freq = np.bincount(np.asarray(tokens), minlength=5) / draws
  probs = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
  keep = np.zeros(5, bool)
  keep[:3] = True  # top-3
  sub = probs[:3] / probs[:3].sum()
  keep[np.searchsorted(np.cumsum(sub), 0.8) + 1:] = False  # nucleus within the top-3
  expected = np.where(keep, probs, 0.0)
  expected /= expected.sum()
  np.testing.assert_allclose(freq, expected, atol=0.01)


def test_new_prompt_length_in_same_bucket_does_not_recompile(monkeypatch):
  # A one-layer config no other test compiled for, so the first call must trace.
  cfg = M.get_config("tiny_gemma3").replace(num_layers=1, norm_eps=1.23e-6)
  params = lively_params(cfg)
  traces = []
  real_forward = S.forward
  monkeypatch.setattr(S, "forward", lambda *a, **k: traces.append(1) or real_forward(*a, **k))
  sampling = S.SamplingParams(temperature=0.8, top_p=0.9)

  def run(lengths, max_new, temperature=0.8):
    tokens, mask = left_pad(random_prompts(cfg, lengths))
    S.generate(cfg, params, tokens, mask, jax.random.key(0), max_new,
               S.SamplingParams(temperature=temperature, top_p=sampling.top_p))
    return len(traces)

  first = run((5, 9), 10)
  assert first > 0  # prefill and decode step traced once each
  # Other prompt lengths in the same 16-token bucket, another budget and temperature.
  assert run((12, 3), 14, temperature=1.1) == first
  assert run((16, 1), 16) == first
  # A longer prompt needs the 24-token bucket: one new compilation, seen by the counter.
  assert run((17, 2), 10) == 2 * first


def test_bucket_sizes():
  assert [S.bucket_size(n, 16) for n in (1, 16, 17, 100, 600)] == [16, 16, 32, 128, 1024]
  assert [S.bucket_size(n, 1) for n in (1, 2, 3, 8, 9)] == [1, 2, 4, 8, 16]
  fine = [S.bucket_size(n, 16, fine=True) for n in (1, 16, 17, 24, 25, 33, 48, 49, 600, 769)]
  assert fine == [16, 16, 24, 24, 32, 48, 48, 64, 768, 1024]


def test_bad_input_is_rejected(tiny3):
  cfg, params = tiny3
  tokens, mask = left_pad(random_prompts(cfg, (3, 4)))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no tokens"):
    S.generate(cfg, params, tokens, mask & np.array([[True], [False]]), key, 4)
  with pytest.raises(ValueError, match="same shape"):
    S.generate(cfg, params, tokens, mask[:, 1:], key, 4)
  with pytest.raises(ValueError, match="token ids must lie in"):
    S.generate(cfg, params, tokens + cfg.vocab_size, mask, key, 4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    S.generate(cfg, params, tokens, mask, key, 0)
  with pytest.raises(ValueError, match="top_k"):
    S.generate(cfg, params, tokens, mask, key, 4, S.SamplingParams(1.0, top_k=cfg.vocab_size + 1))
  for bad in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError):
      S.SamplingParams(**bad)


def test_sampler_formats_encodes_and_decodes(tmp_path):
  """Text in, text out on a tiny tokenizer: template applied, <bos> added, stop token dropped."""
  tokenizer = train_tiny_tokenizer(tmp_path)
  cfg = M.get_config("tiny_gemma3").replace(vocab_size=tokenizer.vocab_size)
  params = lively_params(cfg)
  sampler = S.Sampler(cfg, params, tokenizer, template=ALPACA)
  assert sampler.stop_ids == (tokenizer.eos_id, tokenizer.token_id("<end_of_turn>"))
  prompts = ["Give three tips for staying healthy.", "What are the three primary colors?"]
  tokens, mask = sampler.encode(prompts)
  for row, prompt in enumerate(prompts):
    expected = tokenizer.encode(ALPACA.format(prompt), add_bos=True)
    assert tokens[row][mask[row]].tolist() == expected
    assert not mask[row, :tokens.shape[1] - len(expected)].any()  # left padding
  free = gen(cfg, params, tokens, mask)[0]
  stop = int(free[1, 4])  # row 1 stops at its 5th token (or earlier, if it came before)
  sampler = S.Sampler(cfg, params, tokenizer, template=ALPACA, stop_ids=(stop,))
  out = sampler(prompts, NEW_TOKENS)
  for row in range(2):
    n = int(out.lengths[row])
    ids = np.asarray(out.tokens[row, :n]).tolist()
    assert ids == free[row, :n].tolist()
    assert out.text[row] == tokenizer.decode(ids[:-1] if ids[-1] == stop else ids)
  assert int(out.lengths[1]) <= 5 and out.tokens[1, -1] == max(tokenizer.pad_id, 0)
  with pytest.raises(ValueError, match="needs an rng"):
    sampler(prompts, 4, S.SamplingParams(temperature=1.0))


def test_generate_job_prints_prompt_and_continuation(tmp_path, capsys):
  train_tiny_tokenizer(tmp_path)
  config = generate_config("sample")
  config.model.update(checkpoint="random", preset="tiny_gemma3",
                      tokenizer=str(tmp_path / "tiny_sp.model"))
  config.update(template="alpaca", prompt="What are the three primary colors?",
                max_new_tokens=5)
  generate_job.run(config)
  printed = capsys.readouterr().out
  prompt = ALPACA.format("What are the three primary colors?")
  assert printed.startswith(prompt) and len(printed) > len(prompt) + 1
  config.top_p = 0.0
  with pytest.raises(ValueError, match="config: top_p"):
    generate_job.run(config)
  with pytest.raises(ValueError, match="unknown generate preset 'nope'"):
    generate_config("nope")


def long_text(data_dir, tokenizer, min_tokens: int) -> str:
  """Seed-task instructions and answers joined until the text passes `min_tokens` tokens."""
  text = ""
  with open(data_dir / "stanford_alpaca" / "seed_tasks.jsonl") as f:
    for line in f:
      task = json.loads(line)
      text += f"Instruction: {task['instruction']}\n"
      text += "".join(f"{i['input']}\nAnswer: {i['output']}\n\n" for i in task["instances"])
      if len(tokenizer.encode(text)) > min_tokens:
        return text
  raise AssertionError("seed tasks too short for the prompt")


def test_greedy_270m_matches_transformers_past_the_window(embedded_gemma3, hf_gemma3_270m,
                                                          data_dir):
  """32 greedy tokens after a 540+ token prompt: local layers must drop keys past slot 512."""
  import torch
  cfg, params, tokenizer = embedded_gemma3
  text = long_text(data_dir, tokenizer, cfg.sliding_window_size + 30)
  sampler = S.Sampler(cfg, params, tokenizer)
  ours = sampler(text, 32)
  prompt = tokenizer.encode(text, add_bos=True)
  with torch.no_grad():
    theirs = hf_gemma3_270m.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                     eos_token_id=list(sampler.stop_ids))
  theirs = theirs[0, len(prompt):].tolist()
  n = int(ours.lengths[0])
  assert np.asarray(ours.tokens[0, :n]).tolist() == theirs
  assert ours.text[0] == tokenizer.decode([t for t in theirs if t not in sampler.stop_ids])
