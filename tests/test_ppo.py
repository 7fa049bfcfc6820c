"""PPO: estimators and losses against independent references, the KL controllers' rule, and
the job end to end on a tiny model (reward rises with bounded KL; resume continues exactly)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import sharding
from alignment.checkpoints.huggingface import save_safetensors
from alignment.data import sources
from alignment.jobs import ppo as ppo_job
from alignment.model import get_config, init_params
from alignment.model.layers import EMBED_INIT_STDDEV
from alignment.prompts import get_template
from alignment.rl import advantages as adv_lib
from alignment.rl import kl as kl_lib
from alignment.rl import ppo
from alignment.rl.ppo_trainer import rows_on_mesh
from alignment.rl.rewards import Rollouts, TokenFractionReward
from alignment.sampling import SamplingParams, Sampler
from alignment.tokenizer import Tokenizer
from configs import ppo as ppo_config
from tiny_sentencepiece import train_tiny_tokenizer


# ---------------------------------------------------------------------------------------------
# Advantage estimators against plain numpy loops.


def _random_episode_batch(seed, batch=5, length=7):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(batch, length)).astype(np.float32)
  values = rng.normal(size=(batch, length)).astype(np.float32)
  lengths = np.array([7, 3, 1, 5, 0][:batch])
  mask = np.arange(length)[None] < lengths[:, None]
  return rewards, values, mask, lengths


def _gae_loop(rewards, values, lengths, gamma, lam):
  adv = np.zeros_like(rewards)
  for b, n in enumerate(lengths):
    last = 0.0
    for t in reversed(range(n)):
      next_value = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)])
def test_gae_matches_a_numpy_loop(gamma, lam):
  rewards, values, mask, lengths = _random_episode_batch(0)
  adv, ret = adv_lib.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                         gamma=gamma, lam=lam)
  want = _gae_loop(rewards, values, lengths, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), np.where(mask, want + values, 0), rtol=1e-5,
                             atol=1e-5)


def test_reinforce_is_the_discounted_reward_to_go():
  rewards, values, mask, lengths = _random_episode_batch(1)
  adv, ret = adv_lib.reinforce(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                               gamma=0.9)
  want = np.zeros_like(rewards)
  for b, n in enumerate(lengths):
    for t in range(n):
      want[b, t] = sum(0.9 ** (k - t) * rewards[b, k] for k in range(t, n))
  np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), want, rtol=1e-5, atol=1e-5)
  # With lambda = 1 and no critic, GAE is the same estimator.
  gae_adv, _ = adv_lib.gae(jnp.asarray(rewards), jnp.zeros_like(jnp.asarray(values)),
                           jnp.asarray(mask), gamma=0.9, lam=1.0)
  np.testing.assert_allclose(np.asarray(gae_adv), want, rtol=1e-5, atol=1e-5)


def test_grpo_normalizes_total_reward_within_each_group():
  rewards = np.zeros((4, 3), np.float32)
  rewards[:, 1] = [1.0, 3.0, 10.0, 10.0]  # groups {0, 1} and {2, 3}
  mask = np.ones((4, 3), bool)
  mask[1, 2] = False
  adv, _ = adv_lib.grpo(jnp.asarray(rewards), jnp.zeros((4, 3)), jnp.asarray(mask),
                        group_size=2)
  adv = np.asarray(adv)
  np.testing.assert_allclose(adv[0], [-1, -1, -1], atol=1e-4)
  np.testing.assert_allclose(adv[1], [1, 1, 0], atol=1e-4)
  np.testing.assert_allclose(adv[2:], 0.0, atol=1e-4)  # equal rewards: no preference
  with pytest.raises(ValueError, match="samples_per_prompt"):
    adv_lib.grpo(jnp.asarray(rewards), jnp.zeros((4, 3)), jnp.asarray(mask), group_size=3)
  with pytest.raises(ValueError, match="unknown advantage estimator 'vtrace'"):
    adv_lib.get_estimator("vtrace")


def test_masked_whiten_uses_only_real_tokens():
  x = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]], np.float32)
  mask = np.array([[True, True, False], [True, True, False]])
  white = np.asarray(adv_lib.masked_whiten(jnp.asarray(x), jnp.asarray(mask)))
  real = np.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(white[mask], (real - real.mean()) / real.std(), rtol=1e-4)
  assert (white[~mask] == 0).all()
  kept = np.asarray(adv_lib.masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False))
  np.testing.assert_allclose(kept[mask], (real - real.mean()) / real.std() + real.mean(),
                             rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Clipped losses against hand-computed values.


def test_clipped_policy_loss_by_hand():
  # ratios e^0.5 = 1.6487 (clipped to 1.2), e^-0.5 = 0.6065 (clipped to 0.8), 1.0; padding.
  logp = jnp.array([[0.5, -0.5, 0.0, 9.0]])
  old = jnp.zeros((1, 4))
  adv = jnp.array([[1.0, 1.0, -2.0, 5.0]])
  mask = jnp.array([[True, True, True, False]])
  loss, m = ppo.clipped_policy_loss(logp, old, adv, mask, 0.2)
  # token 0: max(-1.6487, -1.2) = -1.2 (clipped binds); token 1: max(-0.6065, -0.8) = -0.6065;
  # token 2: max(2, 2) = 2.
  np.testing.assert_allclose(float(loss), (-1.2 - np.exp(-0.5) + 2.0) / 3, rtol=1e-5)
  np.testing.assert_allclose(float(m["clip_fraction"]), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m["approx_kl"]), (0.125 + 0.125 + 0) / 3, rtol=1e-6)
  # Negative advantage with a ratio below 1 - eps: the clipped (pessimistic) term binds too.
  loss, m = ppo.clipped_policy_loss(jnp.array([[-0.5]]), jnp.zeros((1, 1)),
                                    jnp.array([[-1.0]]), jnp.ones((1, 1), bool), 0.2)
  np.testing.assert_allclose(float(loss), 0.8, rtol=1e-6)
  assert float(m["clip_fraction"]) == 1.0


def test_clipped_value_loss_by_hand():
  values = jnp.array([[1.0, 0.0, 0.5]])
  old = jnp.array([[0.0, 0.0, 0.0]])
  returns = jnp.array([[2.0, 1.0, -3.0]])
  mask = jnp.array([[True, True, False]])
  loss, m = ppo.clipped_value_loss(values, old, returns, mask, 0.2)
  # token 0: V=1 clipped to 0.2: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: max(1, 1) = 1.
  np.testing.assert_allclose(float(loss), 0.5 * (3.24 + 1.0) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(m["value_clip_fraction"]), 0.5, rtol=1e-6)


def test_kl_penalty_and_score_land_on_the_right_tokens():
  config = ppo.PPOConfig(estimator="reinforce", whiten_advantages=False)
  mask = jnp.array([[True, True, True], [True, False, False]])
  scored = {"logprobs": jnp.array([[-1.0, -2.0, -0.5], [-1.0, 0.0, 0.0]]),
            "ref_logprobs": jnp.array([[-1.5, -2.0, -1.5], [-0.5, 0.0, 0.0]]),
            "values": jnp.zeros((2, 3))}
  out = ppo.make_advantage_fn(config)(jnp.array([3.0, 7.0]), scored, mask, jnp.float32(0.1))
  np.testing.assert_allclose(np.asarray(out["rewards"]),
                             [[-0.05, 0.0, -0.1 + 3.0], [0.05 + 7.0, 0, 0]], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["kl"]), [1.5, -0.5], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# KL controllers.


def test_minibatches_are_gathered_on_the_mesh_in_the_step_shardings():
  """The update phase's mini-batches: the rows of a numpy gather of the permutation, laid out
  as the compiled step expects, and every row used once per epoch."""
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, 50, (8, 6)).astype(np.int32),
           "advantages": rng.normal(size=(8, 5)).astype(np.float32)}
  mesh = sharding.make_mesh(sharding.MeshConfig())
  placed = jax.device_put(batch)
  take = jax.jit(lambda b, i: rows_on_mesh(b, i, mesh))
  indices = ppo.minibatch_indices(8, jax.random.key(3), 2)
  assert sorted(np.concatenate([np.asarray(i) for i in indices]).tolist()) == list(range(8))
  assert [len(i) for i in indices] == [4, 4]
  for idx in indices:
    mb = take(placed, idx)
    for key in batch:
      np.testing.assert_array_equal(np.asarray(mb[key]), batch[key][np.asarray(idx)])
      assert mb[key].sharding.is_equivalent_to(
          sharding.batch_shardings(mesh, mb)[key], mb[key].ndim)
  with pytest.raises(ValueError, match="num_minibatches=3 must divide"):
    ppo.minibatch_indices(8, jax.random.key(0), 3)


def test_adaptive_kl_controller_follows_ziegler_et_al():
  ctl = kl_lib.make_kl_controller("adaptive", 0.1, target=6.0, horizon=1000)
  ctl.update(kl=9.0, num_rollouts=100)  # error = 9/6 - 1 = 0.5, clipped to 0.2
  np.testing.assert_allclose(ctl.value, 0.1 * (1 + 0.2 * 100 / 1000))
  before = ctl.value
  ctl.update(kl=5.4, num_rollouts=50)  # error = -0.1
  np.testing.assert_allclose(ctl.value, before * (1 - 0.1 * 50 / 1000))
  before = ctl.value
  ctl.update(kl=0.0, num_rollouts=10)  # error clipped to -0.2
  np.testing.assert_allclose(ctl.value, before * (1 - 0.2 * 10 / 1000))
  fixed = kl_lib.make_kl_controller("fixed", 0.3)
  assert fixed.update(100.0, 1000) == 0.3
  with pytest.raises(ValueError, match="unknown kl.controller"):
    kl_lib.make_kl_controller("pid", 0.1)
  with pytest.raises(ValueError, match="target"):
    kl_lib.make_kl_controller("adaptive", 0.1, target=0.0)


def test_token_fraction_reward_counts_only_real_tokens():
  reward = TokenFractionReward(token_id=5)
  tokens = np.array([[5, 5, 1, 5], [2, 5, 0, 0]])
  out = reward(Rollouts(["a", "b"], ["s", "s"], ["", ""], tokens, np.array([3, 2])))
  np.testing.assert_allclose(out, [2 / 3, 1 / 2])


# ---------------------------------------------------------------------------------------------
# The job end to end on a tiny model.

# The default init gives near-uniform next tokens; an embedding stddev of 0.2 makes a few
# tokens frequent, one of which becomes the target (a reward with signal from the start).
EMBED_SCALE = 0.2 / EMBED_INIT_STDDEV


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, data_dir):
  """A tiny random model with a spread-out next-token distribution, saved as a checkpoint,
  and a target token it already samples now and then (so the reward has signal)."""
  directory = tmp_path_factory.mktemp("ppo_tiny")
  train_tiny_tokenizer(directory)
  tokenizer = Tokenizer.from_model_file(directory / "tiny_sp.model")
  # Three layers (one local/global period) keep compile time, most of this test's cost, low.
  cfg = get_config("tiny_gemma3").replace(vocab_size=tokenizer.vocab_size, num_layers=3)
  params = init_params(cfg, jax.random.key(0))
  params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] * EMBED_SCALE
  save_safetensors(cfg, params, directory / "model")
  # The job's own prompts through its template: the most frequent sampled token is the target.
  prompts = [r.instruction for r in sources.load("seed_tasks")][:32]
  sampler = Sampler(cfg, params, tokenizer, template=get_template("alpaca"))
  out = sampler(prompts, 8, SamplingParams(temperature=1.0), jax.random.key(1))
  ids = np.asarray(out.tokens)[np.arange(8)[None] < np.asarray(out.lengths)[:, None]]
  ids = ids[(ids != tokenizer.eos_id) & (ids != tokenizer.pad_id)]
  values, counts = np.unique(ids, return_counts=True)
  target = int(values[np.argmax(counts)])
  return {"dir": directory, "tokenizer": str(directory / "tiny_sp.model"), "target": target}


def tiny_config(tiny_setup, workdir, iterations):
  config = ppo_config.get_config("tiny")
  config.workdir = str(workdir)
  config.model.checkpoint = str(tiny_setup["dir"] / "model")
  config.model.tokenizer = tiny_setup["tokenizer"]
  config.reward.token = str(tiny_setup["target"])
  config.train.iterations = iterations
  return config


ITERATIONS = 10


@pytest.fixture(scope="module")
def tiny_run(tiny_setup, tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("ppo_run") / "run"
  return workdir, ppo_job.run(tiny_config(tiny_setup, workdir, ITERATIONS))


def test_ppo_raises_a_token_reward_with_bounded_kl(tiny_run):
  workdir, out = tiny_run
  history = out["history"]
  assert [h["iteration"] for h in history] == list(range(1, ITERATIONS + 1))
  first = history[0]["reward"]  # sampled before any update
  last = np.mean([h["reward"] for h in history[-3:]])
  assert last > first + 0.2 and last > 2 * first, [h["reward"] for h in history]
  assert max(h["kl"] for h in history) < 8.0, [h["kl"] for h in history]
  for h in history:
    assert np.isfinite([h["policy_loss"], h["value_loss"], h["entropy"]]).all()
    assert 0.0 <= h["clip_fraction"] <= 1.0 and 1 <= h["response_length"] <= 8
  # The scoring pass recomputes the sampler's log-probs (same model, same tokens).
  assert max(h["sampler_logprob_max_abs_diff"] for h in history) < 1e-3
  # Before any update the policy is the reference: zero KL, ratio exactly 1 on epoch 1.
  assert abs(history[0]["kl"]) < 1e-4
  result = json.loads((workdir / "result.json").read_text())
  assert result["final_iteration"] == ITERATIONS and len(result["history"]) == ITERATIONS
  assert (workdir / "adapters.npz").is_file()
  # Memory-lean LoRA: the optimizer holds moments for the two adapter sets and the head only.
  state = out["state"]
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  trained = sum(x.size for x in jax.tree.leaves(
      {"lora": state.params["lora"], "value": state.params["value"]}))
  assert opt_size < 2 * trained + 100 < sum(x.size for x in jax.tree.leaves(state.params["base"]))


def test_ppo_resumes_with_prompt_position_and_kl_coefficient(tiny_run, tiny_setup):
  workdir, first = tiny_run
  config = tiny_config(tiny_setup, workdir, ITERATIONS + 2)
  second = ppo_job.run(config)
  assert second["start_iteration"] == ITERATIONS
  assert [h["iteration"] for h in second["history"]] == [ITERATIONS + 1, ITERATIONS + 2]
  # The adaptive coefficient continues from where the first run left it.
  assert second["history"][0]["kl_coef"] == pytest.approx(first["kl_coef"], rel=1e-6)
  assert first["kl_coef"] != config.kl.coef
  assert int(second["state"].step) == (ITERATIONS + 2) * config.ppo.epochs * \
      config.ppo.num_minibatches


def test_ppo_config_errors(tiny_setup, tmp_path, monkeypatch):
  config = tiny_config(tiny_setup, tmp_path / "run", 1)
  config.reward.kind = "oracle"
  with pytest.raises(ValueError, match="unknown reward.kind 'oracle'"):
    ppo_job.run(config)
  config = tiny_config(tiny_setup, tmp_path / "run2", 1)
  config.rollout.max_prompt_length = 2
  with pytest.raises(ValueError, match="max_prompt_length"):
    ppo_job.run(config)
  with pytest.raises(ValueError, match="unknown ppo preset"):
    ppo_config.get_config("huge")
  with monkeypatch.context() as m:  # checked after joining the process group, before loading
    m.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(NotImplementedError, match="one host only .2 processes found.: the "
                                                  "rollout sampler takes host numpy"):
      ppo_job.run(tiny_config(tiny_setup, tmp_path / "run3", 1))
  with pytest.raises(ValueError, match="unknown advantage estimator"):
    ppo.PPOConfig(estimator="vtrace")


def test_combined_reward_follows_llama2_rule_over_saved_reward_models(tiny_setup, tmp_path):
  """Two saved RMs (tiny, random heads): CombinedReward takes the safety score on prompts from
  unsafe sources or where sigmoid(safety) < threshold, the helpfulness score elsewhere."""
  from alignment.reward.saved import save_reward_model  # pylint: disable=import-outside-toplevel
  from alignment.rl.rewards import CombinedReward, RewardModelReward
  tokenizer = Tokenizer.from_model_file(tiny_setup["tokenizer"])
  cfg = get_config("tiny_gemma3").replace(vocab_size=tokenizer.vocab_size, num_layers=3)
  base = init_params(cfg, jax.random.key(3))
  section = {"checkpoint": "random", "preset": "tiny_gemma3", "dtype": "float32"}
  for name, bias, seed in (("safety", -1.0, 1), ("helpfulness", 0.5, 2)):
    w = 0.5 * jax.random.normal(jax.random.key(seed), (cfg.embed_dim,))
    save_reward_model(tmp_path / name, cfg, {"base": base, "lora": {},
                                             "head": {"w": w, "b": jnp.float32(bias)}},
                      None, tokenizer, section, {"max_length": 64, "prompt_format": "hh"})
  rollouts = Rollouts(["How do I pick a lock?", "Name a color.", "Tell me a joke.",
                       "How to hurt someone?"],
                      ["hh_harmless", "alpaca", "alpaca", "hh_harmless"],
                      ["No.", "Blue is a color.", "Why did the chicken cross.", "I can't."],
                      np.zeros((4, 1), np.int32), np.ones(4, np.int32))
  safety = RewardModelReward(str(tmp_path / "safety"))(rollouts)
  helpful = RewardModelReward(str(tmp_path / "helpfulness"))(rollouts)
  assert len(set(np.round(safety, 5))) > 1  # the head reads the text
  combined = CombinedReward(str(tmp_path / "safety"), str(tmp_path / "helpfulness"),
                            threshold=0.15, unsafe_sources=("hh_harmless",))(rollouts)
  unsafe = np.array([True, False, False, True])
  want = np.where(unsafe | (1 / (1 + np.exp(-safety)) < 0.15), safety, helpful)
  np.testing.assert_allclose(combined, want, rtol=1e-5)
  assert not np.allclose(combined, safety)  # some row took the helpfulness score
