"""What a preference job (reward model, DPO) changes in the `Trainable` it starts from.

Both train on pairs of whole sequences on small hardware, so with LoRA both keep the adapters
of the top layers only (`lora.last_layers`: backpropagation stops at the lowest adapted
layer); the reward model also trains a scalar head beside the base or the adapters.
"""

from __future__ import annotations

import jax

from alignment import sharding
from alignment.reward import model as reward_model
from alignment.training.trainer import Trainable


def keep_last_lora_layers(trainable: Trainable, last_layers: int) -> None:
  """Drops the adapters (and their shardings) below the top `last_layers` layers (0 keeps
  all); nothing without LoRA."""
  if trainable.lora is None:
    return
  for key in ("params", "shardings"):
    tree = getattr(trainable, key)
    tree["lora"] = reward_model.select_lora_layers(
        tree["lora"], trainable.model_config.num_layers, last_layers)


def add_head(trainable: Trainable, mesh) -> None:
  """A zero scalar head ("head"), trained fully beside the base (full fine-tuning) or the
  adapters (LoRA), placed by its logical axes."""
  head = reward_model.init_head(trainable.model_config)
  trainable.params["head"] = head
  trainable.shardings["head"] = sharding.logical_to_shardings(
      reward_model.HEAD_AXES, jax.eval_shape(lambda: head), mesh)
