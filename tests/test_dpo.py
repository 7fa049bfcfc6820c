"""DPO: the loss against a numpy reference, its symmetry at policy == reference, and a tiny
end-to-end run that learns an easy synthetic preference."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment import model as M
from alignment.data import batching
from alignment.jobs import dpo as dpo_job
from alignment.reward import data as reward_data
from alignment.rl import dpo
from configs import dpo as dpo_config

CFG = M.get_config("tiny_gemma1")
LORA = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "down"))
LENGTH = 24


@pytest.fixture(scope="module")
def setup():
  base = jax.jit(M.init_params, static_argnums=0)(CFG, jax.random.key(0))
  adapters = lora_lib.init_adapters(CFG, LORA, jax.random.key(1))
  # Nonzero B, so the policy differs from the reference (base with adapters off).
  adapters = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)
  pairs = reward_data.synthetic_pairs(6, CFG.vocab_size, 20, seed=3)
  batch = batching.pad_pair_batch(pairs, buckets=(LENGTH,), pad_id=0)
  return {"base": base, "lora": adapters}, pairs, batch


@jax.jit
def _full_logits(params, tokens):
  """Logits of whole rows under a plain causal mask (no padding mask at all)."""
  n = tokens.shape[1]
  positions = jnp.broadcast_to(jnp.arange(n), tokens.shape)
  return M.forward(CFG, params, tokens, positions,
                   M.causal_mask(jnp.ones(tokens.shape, bool)))[0]


def numpy_sequence_logps(params, pairs, side: str) -> np.ndarray:
  """log p(response | prompt) per pair, summed in float64 over the response tokens only.

  Each row is the bare sequence followed by junk tokens: under the causal mask the junk
  cannot reach earlier positions, so no padding mask is involved.
  """
  rows = np.full((len(pairs), LENGTH), 9, np.int32)
  for i, p in enumerate(pairs):
    seq = np.concatenate([p["prompt"], p[side]])
    rows[i, :len(seq)] = seq
  logits = np.asarray(_full_logits(params, jnp.asarray(rows)), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  out = []
  for i, p in enumerate(pairs):
    start, end = len(p["prompt"]), len(p["prompt"]) + len(p[side])
    out.append(sum(logp[i, t - 1, rows[i, t]] for t in range(start, end)))
  return np.asarray(out)


def numpy_loss(h: np.ndarray, beta: float, eps: float, loss_type: str) -> float:
  if loss_type == "ipo":
    return float(np.mean((h - 1 / (2 * beta)) ** 2))
  log_sig = lambda x: -np.log1p(np.exp(-x))
  return float(np.mean(-(1 - eps) * log_sig(beta * h) - eps * log_sig(-beta * h)))


@pytest.fixture(scope="module")
def reference_ratios(setup):
  params, pairs, _ = setup
  policy = lora_lib.merge(params["base"], params["lora"], LORA)
  return {side: numpy_sequence_logps(policy, pairs, side)
          - numpy_sequence_logps(params["base"], pairs, side)
          for side in ("chosen", "rejected")}


def test_dpo_step_loss_matches_numpy_reference(setup, reference_ratios):
  params, _, batch = setup
  config = dpo.DPOConfig(beta=0.5, label_smoothing=0.2)
  loss, metrics = jax.jit(dpo.make_loss_fn(CFG, LORA, config))(params, batch, jax.random.key(0))
  h = reference_ratios["chosen"] - reference_ratios["rejected"]
  assert abs(h).max() > 0.1  # the test separates policy from reference
  np.testing.assert_allclose(float(loss), numpy_loss(h, 0.5, 0.2, "sigmoid"), rtol=2e-4)
  np.testing.assert_allclose(float(metrics["reward_margin"]), 0.5 * h.mean(), rtol=2e-4,
                             atol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_chosen"]),
                             0.5 * reference_ratios["chosen"].mean(), rtol=2e-4, atol=1e-5)
  assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(h > 0))


@pytest.mark.parametrize("beta,eps,loss_type", [(0.1, 0.0, "sigmoid"), (0.5, 0.2, "sigmoid"),
                                                (0.3, 0.0, "ipo")])
def test_dpo_loss_formula_matches_numpy(beta, eps, loss_type):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (rng.normal(-20, 5, 7) for _ in range(4))
  config = dpo.DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=eps)
  loss, metrics = dpo.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)),
                               config)
  h = (pc - rc) - (pr - rr)
  np.testing.assert_allclose(float(loss), numpy_loss(h, beta, eps, loss_type), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_rejected"]), beta * np.mean(pr - rr),
                             rtol=1e-5)
  assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(h > 0))


def test_sequence_logprobs_ignore_prompt_and_padding(setup):
  params, pairs, batch = setup
  side = batch["chosen"]
  seq_logp = jax.jit(lambda p, s: dpo.sequence_logprobs(CFG, p, s))
  got = np.asarray(seq_logp(params["base"], side))
  want = numpy_sequence_logps(params["base"], pairs, "chosen")
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)
  # Whatever the padding holds, the sums do not change.
  noisy = dict(side, tokens=np.where(side["input_mask"], side["tokens"], 5))
  np.testing.assert_allclose(np.asarray(seq_logp(params["base"], noisy)), got, rtol=1e-5,
                             atol=1e-5)


def test_policy_equal_to_reference_gives_log2_and_antisymmetric_gradients(setup):
  params, _, batch = setup
  fresh = {"base": params["base"],
           "lora": lora_lib.init_adapters(CFG, LORA, jax.random.key(5))}  # B = 0
  swapped = dict(batch, chosen=batch["rejected"], rejected=batch["chosen"])
  loss_fn = dpo.make_loss_fn(CFG, LORA, dpo.DPOConfig(beta=0.2, label_smoothing=0.3))
  grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, metrics), g = grad(fresh, batch, jax.random.key(0))
  (loss_s, _), g_s = grad(fresh, swapped, jax.random.key(0))
  # Policy and reference run as separate passes, so they agree to float32 rounding.
  assert float(loss) == pytest.approx(np.log(2.0), abs=1e-5)
  assert float(loss_s) == pytest.approx(np.log(2.0), abs=1e-5)
  assert abs(float(metrics["reward_margin"])) < 1e-5
  # Swapping chosen and rejected negates the gradient; the base gets none.
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["lora"]))
  assert scale > 0.0
  for a, b in zip(jax.tree.leaves(g["lora"]), jax.tree.leaves(g_s["lora"])):
    np.testing.assert_allclose(np.asarray(a), -np.asarray(b), atol=1e-4 * scale)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["base"])) == 0.0


def test_dpo_config_errors():
  with pytest.raises(ValueError, match="loss_type"):
    dpo.DPOConfig(loss_type="kto")
  with pytest.raises(ValueError, match="label_smoothing"):
    dpo.DPOConfig(label_smoothing=0.5)
  with pytest.raises(ValueError, match="beta"):
    dpo.DPOConfig(beta=0.0)
  with pytest.raises(ValueError, match="not preference sources"):
    config = dpo_config.get_config("tiny")
    config.data.source = ("alpaca",)
    reward_data.build_pairs(config, None, 512)
  with pytest.raises(ValueError, match="unknown dpo preset"):
    dpo_config.get_config("huge")


def test_tiny_dpo_run_learns_the_synthetic_preference(tmp_path):
  config = dpo_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  out = dpo_job.run(config)
  history = out["history"]
  assert [h["step"] for h in history] == [0, 12]
  # policy == reference at the start: loss log 2, no margin
  assert history[0]["val_loss"] == pytest.approx(np.log(2.0), abs=1e-5)
  assert abs(history[0]["val_reward_margin"]) < 1e-4
  assert history[-1]["val_reward_accuracy"] > 0.85
  assert history[-1]["val_loss"] < 0.8 * np.log(2.0)  # 0.52 measured, from log 2 = 0.69
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["final_step"] == 12 and result["data"]["validation_pairs"] == 48
  adapters, _ = lora_lib.load_adapters(tmp_path / "run" / "adapters.npz")
  assert set(adapters) == {f"layer_{i}" for i in range(CFG.num_layers)}
