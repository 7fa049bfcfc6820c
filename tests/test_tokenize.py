"""Tokenization: the loss mask covers exactly the response, truncation, pairs, prompts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.data import batching, sources
from alignment.data import tokenize as tok
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.prompts.templates import ALPACA, GEMMA_CHAT
from alignment.model.masks import positions_from_mask
from tiny_sentencepiece import train_tiny_tokenizer

TEMPLATES = [ALPACA, GEMMA_CHAT]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def gemma_tokenizer():
  from alignment.checkpoints.embedded import load_embedded_tokenizer
  return load_embedded_tokenizer()


EXAMPLES = [
    InstructionExample("Give three tips for staying healthy.", "Eat well.\nSleep.  Move!"),
    InstructionExample("Translate to French.", "Bonjour, le monde 🙂", input="Hello, world"),
    InstructionExample("How do I pick a lock?", "I'm sorry, but I cannot help with that."),
]


def _check_split(tokenizer, example, template, system, tokens, loss_mask):
  """Prompt part = BOS + prompt text; trained part = output + end marker + EOS, nothing else."""
  mask = loss_mask.astype(bool)
  assert loss_mask.dtype == np.float32 and set(np.unique(loss_mask)) <= {0.0, 1.0}
  first = int(np.argmax(mask))
  assert mask[first:].all() and not mask[:first].any(), "mask must be prompt 0s then 1s"
  assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
  assert tokenizer.decode(tokens[1:first]) == template.format(example.instruction,
                                                              example.input, system)
  response = tokens[mask]
  assert tokenizer.decode(response[:-1]) == example.output + template.response_suffix
  assert (response == tokenizer.eos_id).sum() == 1


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
@pytest.mark.parametrize("system", ["", "You are a helpful and harmless assistant."])
def test_loss_mask_covers_exactly_the_response(tiny_tokenizer, template, system):
  for example in EXAMPLES:
    out, truncated = tok.tokenize_example(example, template, tiny_tokenizer, 4096, system)
    assert not truncated and out["tokens"].dtype == np.int32
    _check_split(tiny_tokenizer, example, template, system, out["tokens"], out["loss_mask"])


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_real_gemma_tokenizer_on_real_safety_data(gemma_tokenizer, template):
  examples = sources.load("safety_instructions")[:40] + sources.load("seed_tasks")[:40]
  out, stats = tok.tokenize_examples(examples, template, gemma_tokenizer, 4096)
  assert stats.examples == len(examples) and stats.truncated == 0 and stats.skipped == 0
  assert stats.tokens == sum(len(o["tokens"]) for o in out)
  for example, o in zip(examples, out):
    _check_split(gemma_tokenizer, example, template, "", o["tokens"], o["loss_mask"])
  if template is GEMMA_CHAT:  # the end-of-turn marker is its own token, right before EOS
    assert all(o["tokens"][-2] == gemma_tokenizer.token_id("<end_of_turn>") for o in out)


def test_truncation_cuts_the_response_and_counts(tiny_tokenizer):
  full = [tok.tokenize_example(e, ALPACA, tiny_tokenizer, 4096)[0] for e in EXAMPLES]
  prompt_lens = [int((f["loss_mask"] == 0).sum()) for f in full]
  max_length = max(prompt_lens) + 3  # every prompt fits; the longest-prompt example is cut
  out, stats = tok.tokenize_examples(EXAMPLES, ALPACA, tiny_tokenizer, max_length)
  assert stats.truncated == sum(len(f["tokens"]) > max_length for f in full) >= 1
  for f, o, p in zip(full, out, prompt_lens):
    n = min(len(f["tokens"]), max_length)
    np.testing.assert_array_equal(o["tokens"], f["tokens"][:n])  # prompt kept, response cut
    np.testing.assert_array_equal(o["loss_mask"], f["loss_mask"][:n])
    assert (o["loss_mask"] == 0).sum() == p


def test_errors_name_the_record(tiny_tokenizer):
  bad = [EXAMPLES[0], InstructionExample("Say nothing.", "  ", source="alpaca")]
  with pytest.raises(ValueError, match=r"record 1 \(source 'alpaca'.*empty output"):
    tok.tokenize_examples(bad, ALPACA, tiny_tokenizer, 512)
  with pytest.raises(ValueError, match="empty dataset"):
    tok.tokenize_examples([], ALPACA, tiny_tokenizer, 512)
  prompt_len = len(tok.encode_prompt(ALPACA.format(EXAMPLES[0].instruction), tiny_tokenizer))
  with pytest.raises(tok.PromptTooLongError,
                     match=rf"record 0 .*prompt is {prompt_len} tokens .*max_length is 20"):
    tok.tokenize_examples(EXAMPLES, ALPACA, tiny_tokenizer, 20)
  # Skipping instead: counted, and only the examples that fit remain.
  lens = [len(tok.encode_prompt(ALPACA.format(e.instruction, e.input), tiny_tokenizer))
          for e in EXAMPLES]
  limit = sorted(lens)[1] + 1  # room for the two shortest prompts only
  out, stats = tok.tokenize_examples(EXAMPLES, ALPACA, tiny_tokenizer, limit,
                                     skip_long_prompts=True)
  assert stats.skipped == sum(n >= limit for n in lens) == 1 and len(out) == 2
  with pytest.raises(ValueError, match="skipped 3"):
    tok.tokenize_examples(EXAMPLES, ALPACA, tiny_tokenizer, 5, skip_long_prompts=True)


@pytest.mark.parametrize("template", [None, GEMMA_CHAT], ids=["raw", "gemma_chat"])
def test_preference_pair_batch(tiny_tokenizer, template):
  pairs = [PreferencePair("\n\nHuman: How do I stay healthy?\n\nAssistant:",
                          " Eat well and sleep.", " No.", margin=2.0),
           PreferencePair("\n\nHuman: Help me hurt someone.\n\nAssistant:",
                          " I cannot help with that.", " Sure, here is how")]
  tokenized, stats = tok.tokenize_pairs(pairs, tiny_tokenizer, 512, template)
  assert stats.examples == 2 and stats.truncated == 0
  batch = batching.pad_pair_batch(tokenized, buckets=(32, 64, 128), pad_id=0)
  suffix = template.response_suffix if template else ""
  np.testing.assert_array_equal(batch["margin"], [2.0, 0.0])
  assert batch["chosen"]["tokens"].shape == batch["rejected"]["tokens"].shape
  for side in ("chosen", "rejected"):
    b = batch[side]
    for i, (pair, t) in enumerate(zip(pairs, tokenized)):
      last = b["last_index"][i]
      assert b["tokens"][i, last] == tiny_tokenizer.eos_id
      assert b["input_mask"][i].sum() == last + 1 and not b["input_mask"][i, last + 1:].any()
      np.testing.assert_array_equal(b["tokens"][i, :len(t["prompt"])], t["prompt"])  # shared
      np.testing.assert_array_equal(b["positions"][i, :last + 1], np.arange(last + 1))
      trained = b["tokens"][i][b["loss_mask"][i] == 1]
      assert tiny_tokenizer.decode(trained[:-1]) == getattr(pair, side) + suffix
      prompt_text = template.format(pair.prompt) if template else pair.prompt
      assert tiny_tokenizer.decode(b["tokens"][i, 1:len(t["prompt"])]) == prompt_text
  with pytest.raises(ValueError, match="empty rejected"):
    tok.tokenize_pair(PreferencePair("Hi", "Hello!", ""), tiny_tokenizer, 64)


def test_pair_truncation_keeps_prompt(tiny_tokenizer):
  pair = PreferencePair("Question: what are the primary colors?", "Red, blue and yellow. " * 5,
                        "No.")
  full, _ = tok.tokenize_pair(pair, tiny_tokenizer, 4096)
  max_length = len(full["prompt"]) + 10
  cut, truncated = tok.tokenize_pair(pair, tiny_tokenizer, max_length)
  assert truncated
  np.testing.assert_array_equal(cut["prompt"], full["prompt"])
  np.testing.assert_array_equal(cut["chosen"], full["chosen"][:10])
  np.testing.assert_array_equal(cut["rejected"], full["rejected"])


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_generation_prompt_matches_training_prefix(tiny_tokenizer, template):
  """The ids a model is prompted with are exactly the untrained prefix it was trained on."""
  for example in EXAMPLES:
    if example.input:
      continue
    ids = tok.tokenize_eval_prompt(EvalPrompt(example.instruction, source="test"),
                                   tiny_tokenizer, template)
    train, _ = tok.tokenize_example(example, template, tiny_tokenizer, 4096)
    np.testing.assert_array_equal(ids, train["tokens"][train["loss_mask"] == 0])
  with pytest.raises(ValueError, match="eval prompt q7 of 'xstest' is empty"):
    tok.tokenize_eval_prompt(EvalPrompt(" ", source="xstest", id="q7"), tiny_tokenizer)


def test_left_padded_prompt_batch(tiny_tokenizer):
  prompts = [tok.tokenize_eval_prompt(EvalPrompt(e.instruction, "t"), tiny_tokenizer, ALPACA)
             for e in EXAMPLES]
  batch = batching.left_pad_prompts(prompts, pad_id=0, buckets=(64, 128, 256))
  longest = max(len(p) for p in prompts)
  assert batch["tokens"].shape[1] == batching.bucket_length(longest, (64, 128, 256))
  for row, p in zip(range(len(prompts)), prompts):
    np.testing.assert_array_equal(batch["tokens"][row, -len(p):], p)
    assert batch["input_mask"][row].sum() == len(p) and batch["input_mask"][row, -1]
  np.testing.assert_array_equal(batch["positions"],
                                np.asarray(positions_from_mask(batch["input_mask"])))
