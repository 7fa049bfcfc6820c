"""Salience as a self-contained HTML page (inline CSS, no scripts or external assets) and as a
terminal view (ANSI 24-bit background colours).

Shading: each map is divided by its largest magnitude over the prompt (`salience.normalized`).
Gradient L2 norm is non-negative and shades orange; gradient x input is signed and shades red
(supports the target) or blue (works against it). Target tokens are shown after the prompt,
boxed and unshaded: they are what is being explained.
"""

from __future__ import annotations

import html

import numpy as np

from alignment.interpret.salience import SalienceResult, normalized, piece_text

METHODS = {
    "grad_l2": "Gradient L2 norm",
    "grad_dot_input": "Gradient \u00d7 input",
}
_POSITIVE = (214, 96, 77)  # red: supports the target
_NEGATIVE = (67, 147, 195)  # blue: works against it
_MAGNITUDE = (244, 140, 30)  # orange: unsigned sensitivity


def shade(value: float, signed: bool) -> tuple[int, int, int]:
  """RGB for a normalised score in [-1, 1]: white at 0, the full colour at |1|."""
  colour = (_POSITIVE if value >= 0 else _NEGATIVE) if signed else _MAGNITUDE
  a = min(1.0, abs(float(value)))
  return tuple(int(round(255 + a * (c - 255))) for c in colour)


def _scores(result: SalienceResult, method: str) -> np.ndarray:
  if method not in METHODS:
    raise ValueError(f"unknown salience method {method!r}; known: {', '.join(METHODS)}")
  raw = np.asarray(getattr(result, method), np.float64)
  out = np.zeros_like(raw)
  # <bos> (position 0) is left out of the scale: it is in every prompt and often dominates.
  out[1:result.prompt_length] = normalized(raw[1:result.prompt_length])
  return out


def _visible(piece: str) -> str:
  text = piece_text(piece)
  return text.replace("\n", "\u21b5\n")  # keep line breaks, but show that one is there


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px;
       color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 18px 0 6px 0; }
.meta { color: #555; font-size: 13px; margin-bottom: 10px; }
.text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 15px;
        line-height: 1.9; white-space: pre-wrap; border: 1px solid #ddd; border-radius: 6px;
        padding: 10px 12px; }
.tok { border-radius: 3px; padding: 1px 0; }
.special { color: #777; font-style: italic; }
.target { outline: 1px dashed #888; background: #f4f4f4; border-radius: 3px; }
.legend { font-size: 12px; color: #444; margin-top: 4px; }
.legend span { display: inline-block; width: 90px; height: 12px; vertical-align: middle;
               border: 1px solid #ccc; margin: 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; }
"""


def _token_spans(result: SalienceResult, method: str) -> str:
  scores = _scores(result, method)
  raw = np.asarray(getattr(result, method))
  signed = method == "grad_dot_input"
  out = []
  for i, piece in enumerate(result.pieces):
    text = html.escape(_visible(piece))
    tip = html.escape(f"#{i} {piece!r}: {raw[i]:.4g}", quote=True)
    if i == result.prompt_length:
      out.append('<span class="target">')
    if i >= result.prompt_length:
      out.append(f'<span class="tok" title="{tip}">{text}</span>')
    else:
      r, g, b = shade(scores[i], signed) if i > 0 else (255, 255, 255)
      cls = "tok special" if i == 0 else "tok"  # <bos>: in every prompt, left unshaded
      out.append(f'<span class="{cls}" style="background-color: rgb({r},{g},{b})" '
                 f'title="{tip}">{text}</span>')
  if len(result.pieces) > result.prompt_length:
    out.append("</span>")
  return "".join(out)


def _legend(method: str) -> str:
  if method == "grad_dot_input":
    lo, hi = shade(-1.0, True), shade(1.0, True)
    return (f'<div class="legend">against the target<span style="background: linear-gradient('
            f'to right, rgb{lo}, #fff, rgb{hi})"></span>supports the target</div>')
  c = shade(1.0, False)
  return (f'<div class="legend">low<span style="background: linear-gradient(to right, #fff, '
          f'rgb{c})"></span>high sensitivity</div>')


def to_html(result: SalienceResult, title: str = "Prompt salience", top_k: int = 8) -> str:
  """A complete HTML document showing both salience maps of `result`."""
  n_prompt = result.prompt_length - 1
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
      f"<h1>{html.escape(title)}</h1>",
      f'<div class="meta">{n_prompt} prompt tokens, {result.target_tokens} target tokens; '
      f"log p(target | prompt) = {result.log_likelihood:.3f} "
      f"({result.log_likelihood / max(result.target_tokens, 1):.3f} per token). "
      "Shading is relative to the most salient prompt token of each map; hover a token for its "
      "raw score. The boxed tokens are the target.</div>",
  ]
  for method, name in METHODS.items():
    parts += [f"<h2>{name}</h2>", f'<div class="text">{_token_spans(result, method)}</div>',
              _legend(method)]
  rows = "".join(
      f"<tr><td>{i}</td><td>{html.escape(repr(piece_text(p)))}</td>"
      f'<td class="num">{float(result.grad_l2[i]):.4g}</td>'
      f'<td class="num">{float(result.grad_dot_input[i]):.4g}</td></tr>'
      for i, p, _ in result.top_prompt_tokens("grad_l2", top_k))
  parts += [f"<h2>Top {top_k} prompt tokens by gradient norm</h2>",
            "<table><tr><th>position</th><th>token</th><th>grad L2</th><th>grad \u00d7 input"
            f"</th></tr>{rows}</table>", "</body></html>"]
  return "\n".join(parts) + "\n"


def to_terminal(result: SalienceResult, method: str = "grad_l2") -> str:
  """The prompt with ANSI background shading (black text), then the target underlined."""
  scores = _scores(result, method)
  signed = method == "grad_dot_input"
  out = [f"{METHODS[method]}  (log p(target | prompt) = {result.log_likelihood:.3f})\n"]
  for i, piece in enumerate(result.pieces):
    text = piece_text(piece)
    if i == 0:
      out.append(f"\x1b[2m{text}\x1b[0m")
    elif i < result.prompt_length:
      r, g, b = shade(scores[i], signed)
      out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{text}\x1b[0m")
    else:
      out.append(f"\x1b[4m{text}\x1b[0m")
  return "".join(out) + "\n"
