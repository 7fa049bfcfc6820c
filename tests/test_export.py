"""The export job against transformers and peft, on tiny Gemma 3 runs with random weights.

The runs start from a tiny Gemma 3 saved as an HF folder (random numpy weights: nothing to
compile, so the file stays fast); the tiny presets' `checkpoint='random'` start goes through
the same `load_model` and was checked by hand on sft:tiny and dpo:tiny runs
(docs/MEASUREMENTS.md).

A run directory is laid out as the trainers leave it (config.json from a job config,
adapters.npz from `save_adapters`), with adapters whose B is far from zero so that a wrong
transpose, reshape or scale moves logits far beyond the tolerance. The references are
independent: transformers runs merged/ on its own, and peft applies peft/ to base/ unmerged;
ours is `lora_forward` (adapters unmerged too). float32 throughout; the differences seen
are float32 rounding (up to ~2e-5 on logits up to ~60), the tolerance 1e-4; a 1% error in
lora_alpha moved logits by 0.06, a mis-ordered lora_B reshape by 22.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import schema
from alignment import lora as lora_lib
from alignment import model as M
from alignment.checkpoints import export as export_lib
from alignment.checkpoints import huggingface as hf
from alignment.checkpoints.loading import load_model
from alignment.jobs import export as export_job

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_sentencepiece import train_tiny_tokenizer  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from configs import export as export_config  # noqa: E402
from configs import ppo as ppo_config  # noqa: E402

# Two float32 implementations of one forward: on this project's 2-core Xeon (AVX-512) one
# valid row of `inputs` sits 7.1e-5 (ours) and 5.8e-5 (transformers) from transformers in
# float64, on opposite sides, 1.28e-4 apart; every other row agrees to ~1e-5.
ATOL = 2e-4
TOKENIZER_VOCAB = 600  # tiny_sentencepiece's; a random model is sized to its tokenizer
PROMPT_LEN, PADS = 20, (0, 7)
TEXTS = ("Give three tips for staying healthy.",
         "  two  spaces\n\nnew lines, é ☃ <start_of_turn>user\nhi<end_of_turn>")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> pathlib.Path:
  directory = tmp_path_factory.mktemp("tokenizer")
  train_tiny_tokenizer(directory)
  return directory / "tiny_sp.model"


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory) -> pathlib.Path:
  """A tiny Gemma 3 as a Hugging Face folder, random weights norm scales included (drawn with
  numpy: nothing to compile)."""
  cfg = M.get_config("tiny_gemma3", vocab_size=TOKENIZER_VOCAB)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (0.5 if len(x.shape) == 1 else 0.05)
                        * rng.standard_normal(x.shape, np.float32), M.param_shapes(cfg))
  return hf.save_safetensors(cfg, params, tmp_path_factory.mktemp("hf") / "base")


def make_run(run_dir: pathlib.Path, tokenizer_path: pathlib.Path, targets: str = "",
             layers: tuple[int, ...] | None = None, start_adapters: str = "",
             seed: int = 1, checkpoint: str = "random") -> pathlib.Path:
  """A LoRA run directory as a trainer leaves it: the tiny PPO preset's config.json (its
  random tiny Gemma 3, or `checkpoint`) and adapters.npz with random A and B (a trained B is
  nonzero; the initial one is not)."""
  config = ppo_config.get_config("tiny")
  config.workdir = str(run_dir)
  config.model.checkpoint = checkpoint
  config.model.tokenizer = str(tokenizer_path)
  config.model.adapters = start_adapters
  if targets:
    config.lora.targets = schema.names(targets)
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
  cfg = M.get_config(config.model.preset, vocab_size=TOKENIZER_VOCAB)
  lcfg = lora_lib.LoraConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                             targets=schema.names(config.lora.targets))
  shapes = jax.eval_shape(lambda: lora_lib.init_adapters(cfg, lcfg, jax.random.key(0)))
  rng = np.random.default_rng(seed)  # numpy: no kernel to compile per shape
  adapters = jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape, np.float32), shapes)
  if layers is not None:
    adapters = {f"layer_{i}": adapters[f"layer_{i}"] for i in layers}
  lora_lib.save_adapters(run_dir / "adapters.npz", adapters, lcfg)
  return run_dir


def inputs(vocab_size: int):
  tokens = jax.random.randint(jax.random.key(7), (len(PADS), PROMPT_LEN), 3, vocab_size)
  valid = jnp.arange(PROMPT_LEN)[None, :] >= jnp.array(PADS)[:, None]
  tokens = jnp.where(valid, tokens, 0)
  return tokens, valid, M.positions_from_mask(valid)


def ours(run_dir: pathlib.Path, with_adapters: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(logits of the run's model, validity mask) by our own forward, adapters unmerged."""
  config = json.loads((run_dir / "config.json").read_text())
  cfg, base, _ = load_model(config["model"])
  tokens, valid, positions = inputs(cfg.vocab_size)
  mask = M.causal_mask(valid)
  if with_adapters:
    adapters, lcfg = lora_lib.load_adapters(run_dir / "adapters.npz", cfg)
    logits, _ = jax.jit(lora_lib.lora_forward, static_argnums=(0, 3))(
        cfg, base, adapters, lcfg, tokens, positions, mask)
  else:
    logits, _ = jax.jit(M.forward, static_argnums=0)(cfg, base, tokens, positions, mask)
  return np.asarray(logits), np.asarray(valid)


def theirs(model, vocab_size: int) -> np.ndarray:
  tokens, valid, positions = inputs(vocab_size)
  with torch.no_grad():
    return model(input_ids=torch.tensor(np.asarray(tokens)),
                 attention_mask=torch.tensor(np.asarray(valid, np.int64)),
                 position_ids=torch.tensor(np.asarray(positions))).logits.numpy()


def hf_model(folder: str):
  return transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_path, hf_base):
  """A tiny PPO run (all layers, all seven projections) started from an HF folder, exported
  by the job itself."""
  run_dir = make_run(tmp_path_factory.mktemp("full") / "run", tokenizer_path,
                     checkpoint=str(hf_base))
  config = export_config.get_config()
  config.run_dir = str(run_dir)
  written = export_job.run(config)
  return run_dir, written, ours(run_dir)


def test_merged_folder_loads_in_transformers_with_our_logits(exported):
  run_dir, written, (expected, valid) = exported
  base_logits, _ = ours(run_dir, with_adapters=False)
  # The adapters matter far beyond the tolerance, so dropping or mislaying them would fail.
  assert np.abs(expected - base_logits)[valid].max() > 100 * ATOL
  model = hf_model(written["merged"])
  assert isinstance(model, transformers.Gemma3ForCausalLM)
  got = theirs(model, expected.shape[-1])
  assert np.abs(got[valid]).max() > 1.0
  np.testing.assert_allclose(got[valid], expected[valid], atol=ATOL, rtol=0)


def test_peft_adapters_on_the_base_folder_give_our_logits(exported):
  _, written, (expected, valid) = exported
  config = json.loads(pathlib.Path(written["peft"], "adapter_config.json").read_text())
  assert (config["r"], config["lora_alpha"]) == (4, 16.0)
  assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"])
  model = peft.PeftModel.from_pretrained(hf_model(written["base"]), written["peft"]).eval()
  lora_modules = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
  assert len(lora_modules) == 6 * 7  # every projection of the six layers
  got = theirs(model, expected.shape[-1])
  np.testing.assert_allclose(got[valid], expected[valid], atol=ATOL, rtol=0)
  # peft's own merge gives the merged folder's model.
  merged = theirs(model.merge_and_unload(), expected.shape[-1])
  np.testing.assert_allclose(merged[valid], expected[valid], atol=ATOL, rtol=0)


def test_tokenizer_and_generation_config_travel_with_the_model(exported, tokenizer_path):
  run_dir, written, _ = exported
  _, _, tok = load_model(json.loads((run_dir / "config.json").read_text())["model"])
  for folder in (written["merged"], written["base"]):
    theirs_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
      assert theirs_tok(text)["input_ids"] == tok.encode(text, add_bos=True)
      assert theirs_tok.decode(tok.encode(text)) == text
    generation = transformers.GenerationConfig.from_pretrained(folder)
    assert generation.bos_token_id == tok.bos_id
    assert generation.eos_token_id == [tok.eos_id, tok.token_id("<end_of_turn>")]
  assert (pathlib.Path(written["merged"]) / "tokenizer.model").read_bytes() == (
      tokenizer_path.read_bytes())
  report = json.loads((run_dir / "export" / "export.json").read_text())
  assert report["written"] == written


def test_partial_layers_subset_targets_and_an_sft_start(tmp_path, tokenizer_path, hf_base):
  """Adapters on the top two layers only (`lora.last_layers`), on three projections, of a run
  that started from an SFT run's adapters: base/ is that start, and peft/ goes on top."""
  start = make_run(tmp_path / "sft", tokenizer_path, seed=11, checkpoint=str(hf_base))
  run_dir = make_run(tmp_path / "dpo", tokenizer_path, targets="q,v,down", layers=(4, 5),
                     start_adapters=str(start / "adapters.npz"), checkpoint=str(hf_base))
  written = export_lib.export_run(run_dir, tmp_path / "out")
  expected, valid = ours(run_dir)
  config = json.loads(pathlib.Path(written["peft"], "adapter_config.json").read_text())
  assert config["layers_to_transform"] == [4, 5]
  assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
  model = peft.PeftModel.from_pretrained(hf_model(written["base"]), written["peft"]).eval()
  assert len([m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]) == 6
  np.testing.assert_allclose(theirs(model, expected.shape[-1])[valid], expected[valid],
                             atol=ATOL, rtol=0)
  np.testing.assert_allclose(theirs(hf_model(written["merged"]), expected.shape[-1])[valid],
                             expected[valid], atol=ATOL, rtol=0)


def test_full_fine_tuning_run_is_exported_from_its_merged_hf(tmp_path, tokenizer_path,
                                                              hf_base):
  """An sft run with lora.enabled=False and export_merged=True, written before merged_hf/
  carried a tokenizer: merged/ gets the run's tokenizer, and the weights are merged_hf's."""
  run_dir = make_run(tmp_path / "full", tokenizer_path, checkpoint=str(hf_base))
  (run_dir / "adapters.npz").unlink()
  config = json.loads((run_dir / "config.json").read_text())
  config["lora"]["enabled"] = False
  (run_dir / "config.json").write_text(json.dumps(config))
  cfg, params, tok = load_model(config["model"])
  rng = np.random.default_rng(3)  # "fine-tuned": not the start the config names
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)
  hf.save_safetensors(cfg, params, run_dir / "merged_hf")
  written = export_lib.export_run(run_dir, tmp_path / "out")
  assert sorted(written) == ["merged"]
  tokens, valid, positions = inputs(cfg.vocab_size)
  expected, _ = jax.jit(M.forward, static_argnums=0)(cfg, params, tokens, positions,
                                                     M.causal_mask(valid))
  got = theirs(hf_model(written["merged"]), cfg.vocab_size)
  valid = np.asarray(valid)
  np.testing.assert_allclose(got[valid], np.asarray(expected)[valid], atol=ATOL, rtol=0)
  assert transformers.AutoTokenizer.from_pretrained(written["merged"])(TEXTS[0])[
      "input_ids"] == tok.encode(TEXTS[0], add_bos=True)


def test_a_run_directory_missing_its_files_is_named(tmp_path, tokenizer_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    export_lib.export_run(tmp_path / "nowhere", tmp_path / "out")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty/config\.json not found"):
    export_lib.export_run(tmp_path / "empty", tmp_path / "out")
  run_dir = make_run(tmp_path / "unfinished", tokenizer_path)
  (run_dir / "adapters.npz").unlink()
  with pytest.raises(FileNotFoundError, match=r"unfinished/adapters\.npz not found"):
    export_lib.export_run(run_dir, tmp_path / "out")
  (run_dir / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"unfinished/config\.json: not valid JSON"):
    export_lib.export_run(run_dir, tmp_path / "out")
  (run_dir / "config.json").write_text(json.dumps({"job": "reward", "model": {}}))
  with pytest.raises(ValueError, match="reward-model run"):
    export_lib.export_run(run_dir, tmp_path / "out")
  (run_dir / "config.json").write_text(json.dumps({"job": "sft", "lora": {"enabled": False},
                                                   "model": {"checkpoint": "random"}}))
  with pytest.raises(FileNotFoundError, match=r"merged_hf/config\.json neither"):
    export_lib.export_run(run_dir, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_without_base_folder_peft_names_the_run_s_hf_checkpoint(tmp_path, tokenizer_path,
                                                                 hf_base):
  run_dir = make_run(tmp_path / "hf_run", tokenizer_path, checkpoint=str(hf_base))
  written = export_lib.export_run(run_dir, tmp_path / "out", write_base=False)
  assert sorted(written) == ["merged", "peft"]
  config = json.loads(pathlib.Path(written["peft"], "adapter_config.json").read_text())
  assert config["base_model_name_or_path"] == str(hf_base)
  run_dir = make_run(tmp_path / "run", tokenizer_path)  # base: checkpoint='random'
  with pytest.raises(ValueError, match=r"run/config\.json: the run's base .*'random'"):
    export_lib.export_run(run_dir, tmp_path / "out2", write_base=False)
  assert not (tmp_path / "out2").exists()


def test_job_refuses_a_bad_config():
  config = export_config.get_config()
  with pytest.raises(ValueError, match="config.run_dir"):
    export_job.run(config)
  config.run_dir, config.dtype = "runs/x", "float17"
  with pytest.raises(ValueError, match="config.dtype='float17'"):
    export_job.run(config)
