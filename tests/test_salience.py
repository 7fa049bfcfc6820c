"""Prompt salience: gradients against central finite differences on a tiny model, padding and
the HTML and terminal renderings, the job, and a screenshot of the 270M's
page in headless Chromium."""

import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment.interpret import render
from alignment.interpret import salience as sal
from alignment.jobs import salience as salience_job
from alignment.model.config import get_config
from alignment.model.layers import EMBED_INIT_STDDEV
from alignment.model.masks import causal_mask, positions_from_mask
from alignment.model.transformer import forward, init_params
from alignment.tokenizer import Tokenizer
from configs import salience as salience_config
from tiny_sentencepiece import train_tiny_tokenizer

T, REAL, TARGET_START = 32, 12, 8  # T: the job's length bucket, so its compile is reused


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return directory / "tiny_sp.model"


def _inputs(ids, pad_ids):
  tokens = np.zeros((1, T), np.int32)
  tokens[0, :REAL] = ids
  tokens[0, REAL:] = pad_ids
  input_mask = np.zeros((1, T), bool)
  input_mask[:, :REAL] = True
  target_mask = np.zeros((1, T), bool)
  target_mask[:, TARGET_START:REAL] = True
  return tuple(jnp.asarray(a) for a in (tokens, target_mask, input_mask))


@pytest.fixture(scope="module")
def tiny(tokenizer_path):
  # The model the salience job loads for the `tiny` preset: tiny_gemma3 sized to the tokenizer.
  cfg = get_config("tiny_gemma3", vocab_size=Tokenizer.from_model_file(tokenizer_path).vocab_size)
  params = init_params(cfg, jax.random.key(0))
  # A stddev-1 embedding table (the values of the earlier init): the central differences below
  # step by 1% of an embedding's length, and with the default small table the model is curved
  # on that scale (0.35-0.6% truncation error); large embeddings keep it nearly linear.
  params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] / EMBED_INIT_STDDEV
  ids = np.asarray(jax.random.randint(jax.random.key(1), (REAL,), 3, cfg.vocab_size))
  args = _inputs(ids, 0)
  maps = jax.device_get(sal.salience_maps(cfg, params, *args))
  return cfg, params, args, maps


def test_log_likelihood_matches_a_plain_forward_pass(tiny):
  cfg, params, (tokens, target_mask, input_mask), maps = tiny
  logits, _ = jax.jit(forward, static_argnums=0)(
      cfg, params, tokens, positions_from_mask(input_mask), causal_mask(input_mask))
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  want = sum(logp[0, t - 1, int(tokens[0, t])] for t in range(TARGET_START, REAL))
  np.testing.assert_allclose(maps["log_likelihood"], [want], rtol=1e-5)
  embed = np.asarray(params["embedder"]["input_embedding"])[np.asarray(tokens[0])] * np.sqrt(64)
  np.testing.assert_allclose(maps["embeddings"][0], embed, rtol=1e-6)


def test_salience_matches_central_differences(tiny):
  cfg, params, (tokens, target_mask, input_mask), maps = tiny
  f = jax.jit(lambda d: sal.target_log_likelihood(cfg, params, tokens, target_mask, input_mask,
                                                  d)[0][0])
  emb, grad = maps["embeddings"][0], maps["grad"][0]
  eps = 1e-2  # float32 model (its norms compute in float32): truncation ~eps^2, rounding ~1/eps

  def central(direction, t):
    """Derivative along `direction` by a step of `eps` times the embedding's own length."""
    h = eps * np.linalg.norm(emb[t]) / np.linalg.norm(direction)
    d = np.zeros((1, T, cfg.embed_dim), np.float32)
    d[0, t] = h * direction
    return float(f(jnp.asarray(d)) - f(jnp.asarray(-d))) / (2 * h)

  scale = float(np.abs(maps["grad_dot_input"][0]).max())
  u = np.array(jax.random.normal(jax.random.key(2), (cfg.embed_dim,)))
  u /= np.linalg.norm(u)
  for t in range(REAL):
    # gradient x input = derivative along the token's own embedding (scaling it by 1 + eps).
    assert central(emb[t], t) == pytest.approx(float(maps["grad_dot_input"][0, t]),
                                               abs=1e-3 * scale)
    norm = float(maps["grad_l2"][0, t])
    if norm > 0:  # gradient L2 norm = derivative along the unit gradient direction
      assert central(grad[t] / norm, t) == pytest.approx(norm, rel=2e-3, abs=1e-4)
    assert central(u, t) == pytest.approx(float(grad[t] @ u), abs=2e-3 * norm + 1e-4)
  # The last target token feeds no prediction; padding carries nothing.
  assert maps["grad_l2"][0, REAL - 1] == 0 and not maps["grad_l2"][:, REAL:].any()
  assert (maps["grad_l2"][0, :REAL - 1] > 0).all()


def test_padding_does_not_change_salience(tiny):
  cfg, params, (tokens, _, _), maps = tiny
  other = jax.device_get(sal.salience_maps(cfg, params, *_inputs(tokens[0, :REAL],
                                                                 np.arange(5, 5 + T - REAL))))
  for key in ("log_likelihood", "grad_l2", "grad_dot_input"):
    np.testing.assert_allclose(other[key], maps[key], rtol=1e-6, atol=1e-7)


def _result(pieces, grad_l2, gdi, prompt_length):
  return sal.SalienceResult(pieces=pieces, tokens=np.arange(len(pieces)),
                            prompt_length=prompt_length,
                            grad_l2=np.asarray(grad_l2, np.float32),
                            grad_dot_input=np.asarray(gdi, np.float32), log_likelihood=-3.0)


def test_html_is_escaped_self_contained_and_shaded_by_score():
  pieces = ["<bos>", "<script>", "\u2581a&b", "<0x0A>", "\"q\"", "\u2581ok"]
  result = _result(pieces, [9.0, 0.5, 1.0, 0.25, 0.0, 3.0], [5.0, -2.0, 1.0, 0.0, 0.5, 7.0], 5)
  page = render.to_html(result, title="T <x>")
  assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page
  assert "T &lt;x&gt;" in page and "\u21b5" in page  # the byte piece <0x0A> is a line break
  assert not re.search(r"(src|href)=|@import|url\(|<script|<link", page)
  spans = re.findall(r'<span class="tok[^"]*" style="background-color: rgb\((\d+),(\d+),(\d+)\)',
                     page)
  l2 = [tuple(map(int, s)) for s in spans[:5]]
  assert l2[0] == (255, 255, 255)  # <bos> left out of the scale
  assert l2[2] == render.shade(1.0, False) and l2[4] == (255, 255, 255)  # max and zero
  assert l2[1] == render.shade(0.5, False)
  gdi = [tuple(map(int, s)) for s in spans[5:10]]
  assert gdi[1] == render.shade(-1.0, True) and gdi[2] == render.shade(0.5, True)
  assert page.count('<span class="target">') == 2  # the target (once per map), unshaded
  term = render.to_terminal(result, "grad_dot_input")
  r, g, b = render.shade(-1.0, True)
  assert f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m<script>\x1b[0m" in term
  assert "\x1b[4m ok\x1b[0m" in term
  with pytest.raises(ValueError, match="unknown salience method"):
    render.to_terminal(result, "attention")


def test_salience_job_on_a_tiny_model(tmp_path, tokenizer_path, capsys):
  config = salience_config.get_config("tiny")
  config.model.tokenizer = str(tokenizer_path)
  config.prompt = "Give <b>three</b> tips."
  config.target = "Eat a balanced diet."
  config.out = str(tmp_path / "out" / "s.html")
  config.terminal = "both"
  result = salience_job.run(config)
  page = (tmp_path / "out" / "s.html").read_text()
  assert "<b>" not in page and "</b>" not in page and "&lt;" in page  # pieces may split "<b>"
  assert len(result.pieces) <= T  # shares the compiled program of the tests above
  assert "".join(sal.piece_text(p) for p in result.pieces[1:result.prompt_length]) == (
      config.prompt)
  assert "".join(sal.piece_text(p) for p in result.pieces[result.prompt_length:]) == (
      config.target)
  out = capsys.readouterr().out
  assert "Gradient L2 norm" in out and "Gradient \u00d7 input" in out and "\x1b[48;2;" in out
  config.terminal = "attention"
  with pytest.raises(ValueError, match="config.terminal"):
    salience_job.run(config)


def _chromium() -> str | None:
  for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
    if shutil.which(name):
      return shutil.which(name)
  return None


def test_270m_salience_page_renders_in_chromium(embedded_gemma3, tmp_path):
  cfg, params, tokenizer = embedded_gemma3
  prompt = ("<start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n<start_of_turn>model\n")
  result = sal.prompt_salience(cfg, params, tokenizer, prompt, "I'm sorry, but I can't help")
  assert result.prompt_length == len(tokenizer.encode(prompt, add_bos=True))
  assert np.isfinite(result.grad_l2).all() and (result.grad_l2[:result.prompt_length] > 0).all()
  assert -60 < result.log_likelihood < 0
  page = tmp_path / "salience.html"
  page.write_text(render.to_html(result, title="270M salience"), encoding="utf-8")
  browser = _chromium()
  if browser is None:
    pytest.skip("no chromium binary on PATH (apt-get install chromium); HTML written but not "
                "rendered")
  png = tmp_path / "shot.png"
  subprocess.run(
      [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
       "--disable-component-update", "--disable-sync", "--no-first-run",
       f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
       "--window-size=1200,800", page.as_uri()],
      check=True, capture_output=True, timeout=60)
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  pixels = (image.imread(png)[..., :3] * 255).round().astype(int)
  assert pixels.shape[:2] == (800, 1200)

  def near(colour, tol=12):
    return int((np.abs(pixels - np.asarray(colour)).max(axis=-1) <= tol).sum())

  # The most salient token of each map is drawn in its full colour; text is dark on white.
  assert near(render.shade(1.0, False)) > 50
  signed = result.grad_dot_input[1:result.prompt_length]
  top = render.shade(1.0 if signed[np.abs(signed).argmax()] > 0 else -1.0, True)
  assert near(top) > 50
  assert near((255, 255, 255)) > 0.5 * pixels.shape[0] * pixels.shape[1]
  assert near((34, 34, 34), tol=40) > 500
