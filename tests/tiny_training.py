"""A tiny language model trained on a deterministic synthetic stream, shared by the training
tests; also a subprocess worker (`python tests/tiny_training.py ...`) for runs that need
their own process: several simulated devices, or a SIGKILL mid-run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = "tiny_gemma1"
BATCH, LENGTH = 8, 17


class SyntheticBatches:
  """Batch i is a pure function of (seed, i); `get_state`/`set_state` hold i.

  `poison_at` makes batch `poison_at` carry a NaN that the test loss adds to the loss;
  `kill_at` SIGKILLs the process when batch `kill_at` is requested.
  """

  def __init__(self, vocab_size: int, seed: int = 0, poison_at: int | None = None,
               kill_at: int | None = None):
    self.vocab_size, self.seed = vocab_size, seed
    self.poison_at, self.kill_at = poison_at, kill_at
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.position == self.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    rng = np.random.default_rng([self.seed, self.position])
    # A learnable stream: each row counts up from a random start (mod vocab).
    start = rng.integers(0, self.vocab_size, size=(BATCH, 1))
    tokens = (start + np.arange(LENGTH)[None, :]) % self.vocab_size
    poison = np.full((BATCH,), np.nan if self.position == self.poison_at else 0.0, np.float32)
    self.position += 1
    return {"tokens": tokens.astype(np.int32), "poison": poison}

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])


def optimizer_config(**overrides):
  from alignment.training.optimizer import OptimizerConfig
  values = dict(learning_rate=3e-3, warmup_steps=2, total_steps=20, schedule="cosine",
                weight_decay=0.01, max_grad_norm=1.0)
  values.update(overrides)
  return OptimizerConfig(**values)


def setup(mesh_shape=(1, 1, 1), devices=None, seed: int = 0, **optimizer_overrides):
  """(model config, mesh, initial state, jitted step, tx) for the tiny model on a mesh."""
  import jax
  import jax.numpy as jnp
  from alignment import model, sharding
  from alignment.training import losses, optimizer, step as step_lib, train_state

  cfg = model.get_config(MODEL)
  n = int(np.prod(mesh_shape))
  mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape),
                            devices if devices is not None else jax.devices()[:n])
  tx = optimizer.make_optimizer(optimizer_config(**optimizer_overrides))
  params_sh = sharding.param_shardings(cfg, mesh)
  state = train_state.init_train_state(lambda r: model.init_params(cfg, r), tx,
                                       jax.random.key(seed), mesh, params_sh)
  lm_loss = losses.language_model_loss(cfg)

  def loss_fn(params, batch, rng):
    loss, aux = lm_loss(params, batch, rng)
    return loss + jnp.mean(batch["poison"]), aux

  example = {"tokens": np.zeros((BATCH, LENGTH), np.int32), "poison": np.zeros((BATCH,))}
  jitted = step_lib.jit_train_step(
      step_lib.make_train_step(loss_fn, tx), train_state.state_shardings_of(state),
      sharding.batch_shardings(mesh, example), sharding.replicated(mesh))
  return cfg, mesh, state, jitted, tx


def main(argv=None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mesh", default="1,1,1")
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--checkpoint_dir")
  parser.add_argument("--save_every", type=int, default=4)
  parser.add_argument("--kill_at", type=int)
  parser.add_argument("--result", required=True)
  args = parser.parse_args(argv)

  from alignment.training import checkpointing, loop
  mesh_shape = tuple(int(x) for x in args.mesh.split(","))
  cfg, mesh, state, step, _ = setup(mesh_shape)
  ckpt = checkpointing.Checkpointer(checkpointing.CheckpointConfig(
      args.checkpoint_dir, save_every=args.save_every, max_to_keep=2))
  batches = SyntheticBatches(cfg.vocab_size, kill_at=args.kill_at)
  result = loop.train(loop.LoopConfig(num_steps=args.steps, log_every=2, progress_bar=False),
                      state, step, batches, ckpt, mesh=mesh)
  ckpt.close()
  with open(args.result, "w") as f:
    json.dump(result.summary, f)




def mesh_report(mesh_shapes, steps: int, **optimizer_overrides) -> dict:
  """Trains the tiny model `steps` steps on each mesh; returns losses and layouts per mesh."""
  import jax
  report = {}
  for shape in mesh_shapes:
    cfg, mesh, state, step, _ = setup(shape, **optimizer_overrides)
    batches = SyntheticBatches(cfg.vocab_size)
    losses = []
    for _ in range(steps):
      from alignment.training import distributed
      state, metrics = step(state, distributed.global_batch(next(batches), mesh))
      losses.append(float(metrics["loss"]))
    layout = {}
    flat = jax.tree_util.tree_leaves_with_path({"params": state.params,
                                                "opt_state": state.opt_state})
    for path, leaf in flat:
      if getattr(leaf, "ndim", 0) >= 1:
        layout[jax.tree_util.keystr(path)] = {
            "spec": [None if e is None else list(e) if isinstance(e, tuple) else e
                     for e in leaf.sharding.spec],
            "shape": list(leaf.shape),
            "shard_shape": list(leaf.addressable_shards[0].data.shape),
            "num_devices": len(leaf.sharding.device_set)}
    report[",".join(map(str, shape))] = {"losses": losses, "layout": layout}
  return report


def _mesh_main(argv) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--meshes", required=True)  # e.g. "1,1,1;8,1,1"
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--grad_accum_steps", type=int, default=1)
  parser.add_argument("--result", required=True)
  args = parser.parse_args(argv)
  shapes = [tuple(int(x) for x in m.split(",")) for m in args.meshes.split(";")]
  report = mesh_report(shapes, args.steps, grad_accum_steps=args.grad_accum_steps,
                       frozen=("final_norm",))
  with open(args.result, "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  if sys.argv[1:2] == ["meshes"]:
    _mesh_main(sys.argv[2:])
  else:
    main()
