"""Config sections become the library's dataclasses by field name; lists read both ways."""

import dataclasses
import subprocess
import sys

import ml_collections
import pytest

from alignment import lora as lora_lib
from alignment.jobs import common
from alignment.rl import ppo
from alignment.sampling import SamplingParams
from alignment.schema import from_section, names, section
from alignment.sharding import MeshConfig
from alignment.training.distributed import DistributedConfig
from alignment.training.trainer import TrainerConfig
from configs import ppo as ppo_config
from configs import sft as sft_config


def test_names_reads_strings_and_sequences_alike():
  assert names(" q, v ,,o") == names(("q", "v", "o")) == names(["q", " v", "o", ""]) == (
      "q", "v", "o")
  assert names("") == names(()) == ()
  assert names("a|b", sep="|") == ("a", "b")
  assert names(("q,v",)) == ("q", "v")  # ml_collections' reading of --config.x=q,v
  with pytest.raises(TypeError, match="expected strings, got int 3"):
    names(("q", 3))


def test_from_section_takes_fields_by_name_and_leaves_job_keys():
  section = ml_collections.ConfigDict(dict(clip_ratio=0.3, vf_coef=0.5, epochs=4,
                                           estimator="reinforce"))
  got = from_section(ppo.PPOConfig, section, group_size=2)
  assert got == dataclasses.replace(ppo.PPOConfig(), clip_ratio=0.3, vf_coef=0.5,
                                    estimator="reinforce", group_size=2)
  with pytest.raises(TypeError, match="PPOConfig has no field.*'epochs'"):
    from_section(ppo.PPOConfig, section, epochs=1)
  # A required field the section lacks names the section.
  with pytest.raises(ValueError, match="config.train: .*learning_rate"):
    from_section(TrainerConfig, {"steps": 3}, "config.train")
  # The dataclass's own checks still run.
  with pytest.raises(ValueError, match="unknown advantage estimator"):
    from_section(ppo.PPOConfig, {"estimator": "vtrace"})


def test_every_preset_translates_as_the_hand_written_code_did():
  """The generic translation gives what the field-by-field code gave (for each SFT preset)."""
  for preset in ("tiny", None):
    config = sft_config.get_config(preset)
    t, c = config.train, config.checkpoint
    assert common.trainer_config(config) == TrainerConfig(
        steps=t.steps, learning_rate=t.learning_rate, schedule=t.schedule,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or None, grad_accum_steps=t.grad_accum_steps,
        log_every=t.log_every, progress_bar=t.progress_bar, checkpoint_every=c.every,
        checkpoint_keep=c.keep, async_save=c.async_save)
    lora = config.lora
    assert common.lora_config(lora) == lora_lib.LoraConfig(
        rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
        targets=tuple(lora.targets))
  p = ppo_config.get_config("tiny")
  assert common.lora_config(ml_collections.ConfigDict({**p.lora, "enabled": False})) is None


def test_a_list_is_a_tuple_or_a_string_on_the_command_line():
  code = ("from configs import sft; from ml_collections import config_flags; "
          "from absl import flags; import sys; from alignment.jobs import common; "
          "config_flags.DEFINE_config_file('config', lock_config=True); "
          "flags.FLAGS(sys.argv); print(common.lora_config(flags.FLAGS.config.lora).targets)")
  for value in ("q,v", "('q', 'v')", "q, v"):
    out = subprocess.run(
        [sys.executable, "-c", code, "--config=configs/sft.py:tiny",
         f"--config.lora.targets={value}"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "('q', 'v')"


def test_section_is_written_from_the_dataclass_and_reads_back_to_it():
  s = section(lora_lib.LoraConfig, dict(enabled=True), rank=4)
  assert sorted(s) == ["alpha", "dropout", "enabled", "rank", "targets"]
  assert from_section(lora_lib.LoraConfig, s) == lora_lib.LoraConfig(rank=4)
  for cls in (MeshConfig, DistributedConfig, SamplingParams, ppo.PPOConfig):
    assert from_section(cls, section(cls)) == cls()
  # The shared sections of the configs are these sections: keys typed as the fields.
  config = sft_config.get_config("tiny")
  assert from_section(DistributedConfig, config.distributed) == DistributedConfig()
  with pytest.raises(TypeError):  # ml_collections keeps the field's type
    config.mesh.data = "two"
  with pytest.raises(TypeError, match="MeshConfig has no field.*'dp'"):
    section(MeshConfig, dp=2)
  with pytest.raises(TypeError, match="extra key.*'rank'.*give them as values"):
    section(lora_lib.LoraConfig, dict(rank=2))
  with pytest.raises(TypeError, match="TrainerConfig.steps has no default"):
    section(TrainerConfig)
