"""Activation sharding constraints from the logical-axis rules table (`model.activations`,
`sharding.activation_constraints`): where the decoder marks its activations, what the table
makes of the names, and that constraining changes placement only, never the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from alignment import model, sharding
from alignment.model import activations


def test_outside_a_mesh_constrain_is_the_identity_and_checks_the_names():
  x = jnp.ones((2, 3, 4))
  assert activations.constrain(x, activations.RESIDUAL) is x
  seen = []
  with activations.constrained_by(lambda a, names: seen.append(names) or a):
    with pytest.raises(ValueError, match="do not match an array of shape"):
      activations.constrain(x, activations.QUERIES)
    activations.constrain(x, activations.RESIDUAL)
  assert seen == [activations.RESIDUAL]
  assert activations.constrain(x, activations.QUERIES) is x  # the block restored the default


def test_the_decoder_marks_every_sublayer_and_the_logits():
  cfg = model.get_config("tiny_gemma3")
  params = model.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 8), jnp.int32)
  mask = model.causal_mask(jnp.ones((2, 8), bool))
  seen = []
  with activations.constrained_by(lambda a, names: seen.append((names, a.shape)) or a):
    model.forward(cfg, params, tokens, jnp.broadcast_to(jnp.arange(8), (2, 8)), mask)
  names = [n for n, _ in seen]
  layers = cfg.num_layers
  assert names.count(activations.RESIDUAL) == 1 + 2 * layers  # embedding + 2 per block
  assert names.count(activations.QUERIES) == 2 * layers        # queries and attention output
  assert names.count(activations.KEYS) == 2 * layers           # keys and values
  assert names.count(activations.MLP_HIDDEN) == layers
  assert seen[-1] == (activations.LOGITS, (2, 8, cfg.vocab_size))
  assert (activations.MLP_HIDDEN, (2, 8, cfg.hidden_dim)) in seen


def test_the_rules_table_names_every_activation_axis():
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  for names in (activations.RESIDUAL, activations.QUERIES, activations.KEYS,
                activations.MLP_HIDDEN, activations.LOGITS):
    assert set(names) <= set(rules), set(names) - set(rules)
  mesh = AbstractMesh((2, 2, 2), sharding.AXES)
  spec = lambda names, shape: sharding.activation_sharding(mesh, names, shape).spec
  # Batch over data and fsdp, the MLP hidden over tensor, the feature axis whole (FSDP splits
  # the *weights'* embed axis, not the activations').
  assert spec(activations.MLP_HIDDEN, (8, 16, 128)) == P(("data", "fsdp"), None, "tensor")
  assert spec(activations.RESIDUAL, (8, 16, 64)) == P(("data", "fsdp"), None, None)
  # A dimension the mesh does not divide (one KV head, a batch of 2) is replicated.
  assert spec(activations.KEYS, (8, 16, 1, 16)) == P(("data", "fsdp"), None, None, None)
  assert spec(activations.RESIDUAL, (2, 16, 64)) == P(None, None, None)


SHARDED = r"""
import json, re
import jax, jax.numpy as jnp, optax
from alignment import model, sharding
from alignment.training import step as step_lib, train_state

out = {}
for scan in (False, True):  # the scanned stack is only lowered (compiles cost minutes here)
  cfg = model.get_config("tiny_gemma3").replace(scan_layers=scan, num_layers=3)
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  params = model.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, cfg.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(16), (8, 16))
  mask = model.causal_mask(jnp.ones((8, 16), bool))

  def loss_fn(p, batch, rng):
    logits = model.forward(cfg, p, batch, positions, mask)[0]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), batch[:, 1:, None], -1)
    return nll.mean(), {}

  tx = optax.adam(1e-2)
  state = train_state.train_state_from_params(params, tx, jax.random.key(2), mesh,
                                              sharding.param_shardings(cfg, mesh))
  shardings = train_state.state_shardings_of(state)
  bs = sharding.batch_sharding(mesh, 2)
  constrained = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, tx), shardings, bs,
                                        sharding.replicated(mesh))
  plain = jax.jit(step_lib.make_train_step(loss_fn, tx), in_shardings=(shardings, bs),
                  out_shardings=(shardings, None))
  text = constrained.lower(state, tokens).as_text()
  count = lambda pattern, t: len(re.findall(pattern, t))
  r = out[str(scan)] = {
      "constraints": count(r"sdy\.sharding_constraint", text),
      "plain_constraints": count(r"sdy\.sharding_constraint", plain.lower(state, tokens).as_text()),
      "mlp_split": count(r'<@mesh, \[\{"data", "fsdp"\}, \{\}, \{"tensor"\}\]> : tensor<8x16x128', text),
      "layers": cfg.num_layers}
  if not scan:
    r["losses"] = {}
    for name, fn in (("constrained", constrained), ("plain", plain)):
      s, r["losses"][name] = jax.tree.map(jnp.copy, state), []
      for _ in range(2):
        s, metrics = fn(s, tokens)
        r["losses"][name].append(float(metrics["loss"]))
print(json.dumps(out))
"""


def test_train_step_is_constrained_on_the_mesh_and_computes_the_same_losses():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  unrolled, scanned = report["False"], report["True"]
  layers = unrolled["layers"]
  # Unrolled: every block's 7 marks plus embedding and logits, in the forward pass (the
  # backward's transposed constraints come on top).
  assert unrolled["constraints"] >= 7 * layers + 2, unrolled
  assert unrolled["mlp_split"] >= layers, unrolled
  assert unrolled["plain_constraints"] == 0 and scanned["plain_constraints"] == 0
  assert scanned["constraints"] > 0 and scanned["mlp_split"] >= 1, scanned
  # Same program up to placement: the losses agree to float32 reduction order.
  losses = unrolled["losses"]
  for a, b in zip(losses["constrained"], losses["plain"]):
    assert abs(a - b) <= 1e-5 * abs(b), losses
  assert losses["constrained"][-1] < losses["constrained"][0]  # it trains
