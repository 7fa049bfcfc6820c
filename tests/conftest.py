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
