"""The scalar head reuses the decoder unchanged and reads its final hidden states."""

import jax
import jax.numpy as jnp
import numpy as np

from alignment import model as M


def test_scalar_head_is_linear_readout_of_decoder_hidden_states():
  cfg = M.get_config("tiny_gemma3")
  lm_params = M.init_params(cfg, jax.random.key(0))
  params = M.init_scalar_head_params(cfg, jax.random.key(1), backbone_params=lm_params)
  params["w"] = jax.random.normal(jax.random.key(2), (cfg.embed_dim,))
  params["b"] = jnp.asarray(0.5)
  tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, cfg.vocab_size)
  valid = jnp.ones((2, 9), bool)
  pos, mask = M.positions_from_mask(valid), M.causal_mask(valid)
  scores = M.scalar_head_forward(cfg, params, tokens, pos, mask)
  hidden, _ = M.forward(cfg, lm_params, tokens, pos, mask, return_hidden=True)
  np.testing.assert_allclose(scores, np.asarray(hidden) @ np.asarray(params["w"]) + 0.5,
                             rtol=1e-5, atol=1e-5)
  # The decoder's own tree is untouched: the LM still runs on params["backbone"].
  logits, _ = M.forward(cfg, params["backbone"], tokens, pos, mask)
  assert logits.shape == (2, 9, cfg.vocab_size)
  last = M.score_at(scores, jnp.array([3, 8]))
  np.testing.assert_allclose(last, [scores[0, 3], scores[1, 8]])
