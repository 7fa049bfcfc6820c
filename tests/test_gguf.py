"""The memory-mapped GGUF reader against gguf.GGUFReader, the weight mapping, and bad files."""

from __future__ import annotations

import pathlib
import re

import gguf
import numpy as np
import pytest

from alignment.checkpoints.embedded import embedded_gguf_path
from alignment.checkpoints.gguf import GGUFError, load_gguf, read_gguf, read_gguf_vocab
from alignment.model.config import get_config


@pytest.fixture(scope="module")
def path() -> pathlib.Path:
  return embedded_gguf_path()


@pytest.fixture(scope="module")
def ours(path):
  return read_gguf(path)


@pytest.fixture(scope="module")
def reference(path) -> gguf.GGUFReader:
  return gguf.GGUFReader(path)


def test_metadata_matches_gguf_reader(ours, reference):
  keys = [k for k in reference.fields if not k.startswith("GGUF.")]
  assert sorted(keys) == sorted(ours.metadata)
  for key in keys:
    want, got = reference.fields[key].contents(), ours.metadata[key]
    if isinstance(got, np.ndarray):
      np.testing.assert_array_equal(got, np.asarray(want), err_msg=key)
    else:
      assert got == want, key
  assert ours.version == reference.fields["GGUF.version"].contents()


def test_tensor_directory_matches_gguf_reader(ours, reference):
  assert [t.name for t in reference.tensors] == list(ours.tensors)
  for t in reference.tensors:
    info = ours.tensors[t.name]
    assert info.shape == tuple(int(d) for d in reversed(t.shape)), t.name
    assert info.qtype == t.tensor_type, t.name
    assert info.offset == t.data_offset, t.name
    assert info.nbytes == t.n_bytes, t.name


@pytest.mark.parametrize("name, qtype", [
    ("blk.4.attn_v.weight", "Q8_0"),
    ("blk.0.attn_q.weight", "Q5_0"),
    ("blk.7.attn_output.weight", "Q4_K"),
    ("blk.17.ffn_down.weight", "Q6_K"),
    ("blk.3.post_ffw_norm.weight", "F32"),
])
def test_dequantized_tensors_match_gguf_reader(ours, reference, name, qtype):
  t = next(t for t in reference.tensors if t.name == name)
  assert t.tensor_type.name == qtype
  want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
  got = ours.tensor(name)
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  np.testing.assert_array_equal(got, want)


def test_vocab(ours):
  tokens, scores, types = read_gguf_vocab(ours)
  assert len(tokens) == len(scores) == len(types) == 262144
  assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
  assert tokens[105:107] == ["<start_of_turn>", "<end_of_turn>"]
  assert np.sum(types == 6) == 256  # one BYTE piece per byte value


def test_load_gguf_config_and_mapping(ours, embedded_gemma3):
  cfg, params, _ = embedded_gemma3
  assert cfg == get_config("gemma3_270m")
  n, h, d = cfg.num_heads, cfg.head_dim, cfg.embed_dim
  layer = params["layer_4"]
  # GGUF stores Linear weights as [out, in] and RMSNorm weights as 1 + w.
  wq = ours.tensor("blk.4.attn_q.weight")      # [N*H, D]
  np.testing.assert_array_equal(np.asarray(layer["attn"]["q_einsum"])[2, :, 17], wq[2 * h + 17])
  wo = ours.tensor("blk.4.attn_output.weight")  # [D, N*H]
  np.testing.assert_array_equal(np.asarray(layer["attn"]["attn_vec_einsum"])[3, 5],
                                wo[:, 3 * h + 5])
  wv = ours.tensor("blk.4.attn_v.weight")      # [K*H, D]
  np.testing.assert_array_equal(np.asarray(layer["attn"]["kv_einsum"])[1, 0], wv.T)
  up = ours.tensor("blk.4.ffn_up.weight")      # [F, D]
  np.testing.assert_array_equal(np.asarray(layer["mlp"]["gating_einsum"])[1], up.T)
  np.testing.assert_allclose(np.asarray(layer["pre_ffw_norm"]["scale"]) + 1,
                             ours.tensor("blk.4.ffn_norm.weight"), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(layer["attn"]["_key_norm"]["scale"]) + 1,
                             ours.tensor("blk.4.attn_k_norm.weight"), rtol=0, atol=1e-6)
  assert np.asarray(params["embedder"]["input_embedding"]).shape == (cfg.vocab_size, d)
  assert n * h == wq.shape[0]


def test_load_gguf_rejects_other_preset(path):
  with pytest.raises(GGUFError, match=r"(?s)gemma3_1b.*num_layers: file has 18, gemma3_1b has 26"):
    load_gguf(path, expected="gemma3_1b")


# -- malformed files -------------------------------------------------------------------

def _write(tmp_path, name: str, data: bytes) -> pathlib.Path:
  target = tmp_path / name
  target.write_bytes(data)
  return target


def test_wrong_magic(tmp_path, path):
  bad = _write(tmp_path, "magic.gguf", b"GGML" + path.read_bytes()[4:4096])
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*not a GGUF file"):
    read_gguf(bad)


def test_empty_file(tmp_path):
  bad = _write(tmp_path, "empty.gguf", b"")
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*empty"):
    read_gguf(bad)


def test_truncated_in_metadata(tmp_path, path):
  with open(path, "rb") as f:
    bad = _write(tmp_path, "cut_meta.gguf", f.read(2_000_000))  # inside the vocabulary
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}: truncated.*tokenizer\.ggml\.tok"):
    read_gguf(bad)


def test_truncated_in_tensor_data(tmp_path, path, ours):
  with open(path, "rb") as f:
    bad = _write(tmp_path, "cut_data.gguf", f.read(ours.header_bytes + 1000))
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}: truncated; tensor \S+ needs bytes"):
    read_gguf(bad)


def test_unsupported_version(tmp_path, path):
  bad = _write(tmp_path, "v9.gguf", b"GGUF" + (9).to_bytes(4, "little") + b"\0" * 64)
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*unsupported GGUF version 9"):
    read_gguf(bad)


def _tiny_gguf(tmp_path, arch: str, drop_key: str | None = None) -> pathlib.Path:
  """A minimal GGUF with the gemma3 hyper-parameters of the 270M model and one tensor."""
  target = tmp_path / f"{arch}.gguf"
  writer = gguf.GGUFWriter(str(target), arch)
  fields = {"block_count": 18, "embedding_length": 640, "feed_forward_length": 2048,
            "attention.head_count": 4, "attention.head_count_kv": 1,
            "attention.key_length": 256, "attention.sliding_window": 512}
  for key, value in fields.items():
    if key != drop_key:
      writer.add_uint32(f"{arch}.{key}", value)
  writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
  writer.add_float32(f"{arch}.rope.freq_base", 1e6)
  writer.add_tensor("token_embd.weight", np.zeros((262144, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return target


def test_wrong_architecture(tmp_path):
  bad = _tiny_gguf(tmp_path, "llama")
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*'llama'; only 'gemma3'"):
    load_gguf(bad)


def test_missing_metadata_field(tmp_path):
  bad = _tiny_gguf(tmp_path, "gemma3", drop_key="block_count")
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*gemma3\.block_count is missing"):
    load_gguf(bad)


def test_missing_tensor(tmp_path):
  bad = _tiny_gguf(tmp_path, "gemma3")  # right hyper-parameters, but only the embedding
  with pytest.raises(GGUFError, match=rf"{re.escape(str(bad))}.*no tensor named 'output_norm"):
    load_gguf(bad, expected=None)
