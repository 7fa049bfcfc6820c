"""Shared pytest setup: point the data directory at ../shared/data beside the project."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("ALIGNMENT_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = pathlib.Path(os.environ["ALIGNMENT_DATA_DIR"])
  if not path.is_dir():
    pytest.fail(f"data directory {path} not found; set ALIGNMENT_DATA_DIR")
  return path


@pytest.fixture(scope="session")
def embedded_gemma3():
  """(config, float32 params, tokenizer) of the embedded Gemma 3 270M, loaded once per run."""
  from alignment.checkpoints.embedded import load_embedded
  return load_embedded("float32")


@pytest.fixture(scope="session")
def hf_gemma3_270m():
  """transformers' Gemma3ForCausalLM (float32, eval mode) read from the same embedded GGUF."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from alignment.checkpoints.embedded import embedded_gguf_path
  path = embedded_gguf_path()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32)
  return model.eval()
