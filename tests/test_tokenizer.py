"""The Gemma 3 tokenizer rebuilt from the GGUF vocabulary, against transformers' GGUF tokenizer."""

from __future__ import annotations

import pytest

from alignment.checkpoints.embedded import embedded_gguf_path
from alignment.checkpoints.gguf_tokenizer import tokenizer_from_gguf
from alignment.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "def add(a, b):\n\treturn a + b  # sum\n\n\nprint(add(1, 2))",
    "    indented\n        twice, then   three spaces   ",
    "Digits: 0123456789, 3.14159, -42, 1,000,000",
    "日本語のテキストと中文句子，한국어 문장。",
    "emoji 🤖🎉 and a family 👨‍👩‍👧 with a ZWJ",
    "Ünïcödé façade naïve café, Ελληνικά, русский, עברית",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    " leading space and trailing\t",
    "a\u00a0non-breaking\u2009thin space",
    "a    b  c",
    "https://example.com/path?q=1&x=%20#frag",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
  return tokenizer_from_gguf(embedded_gguf_path())


@pytest.fixture(scope="module")
def hf_tokenizer():
  transformers = pytest.importorskip("transformers")
  path = embedded_gguf_path()
  return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_special_ids(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.vocab_size == 262144
  assert tok.token_id("<start_of_turn>") == 105
  assert tok.token_id("<end_of_turn>") == 106
  assert tok.piece(2) == "<bos>" and tok.piece(3) == "<unk>"
  with pytest.raises(KeyError, match="not in the vocabulary"):
    tok.token_id("<no such piece>")


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.encode(text, add_bos=True, add_eos=True) == [2] + ids + [1]


def test_pieces(tok):
  # Chat markers are user-defined: matched whole inside raw text.
  assert tok.encode("<start_of_turn>user\nhi<end_of_turn>")[0] == 105
  assert tok.encode("<start_of_turn>user\nhi<end_of_turn>")[-1] == 106
  # Control pieces are not: text cannot smuggle in a BOS/EOS.
  assert not {0, 1, 2} & set(tok.encode("<bos><eos><pad>"))
  # Digits are split one per token; whitespace runs are single "▁▁..." pieces.
  assert [tok.piece(i) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
  assert [tok.piece(i) for i in tok.encode("a    b")] == ["a", "▁▁▁▁", "b"]
  # Unseen characters fall back to byte pieces and still round-trip.
  ids = tok.encode("\U0001fae8")  # a rare emoji
  assert tok.decode(ids) == "\U0001fae8"


def test_matches_transformers_gguf_tokenizer(tok, hf_tokenizer):
  # A literal U+2581 encodes like a space (so it decodes as one): SentencePiece's own rule.
  for text in TEXTS + ["a literal \u2581 lower block", "\u2581\u2581x"]:
    assert tok.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
  assert hf_tokenizer.encode("hi")[0] == tok.bos_id


def test_serialized_proto_round_trip(tok):
  again = Tokenizer.from_serialized_proto(tok.serialized_proto())
  for text in TEXTS:
    assert again.encode(text) == tok.encode(text)


def test_from_gguf_cache(tmp_path, tok):
  path = embedded_gguf_path()
  first = tokenizer_from_gguf(path, cache_dir=tmp_path)
  (cached,) = tmp_path.glob("*.spm.model")
  assert Tokenizer.from_model_file(cached).encode(TEXTS[1]) == tok.encode(TEXTS[1])
  cached.write_bytes(b"corrupt")  # a broken cache entry is rebuilt, not trusted
  again = tokenizer_from_gguf(path, cache_dir=tmp_path)
  assert again.encode(TEXTS[3]) == first.encode(TEXTS[3])
  assert cached.stat().st_size > 1000


def test_bad_input(tmp_path, tok):
  with pytest.raises(ValueError, match="blob: not a valid SentencePiece model"):
    Tokenizer.from_serialized_proto(b"\x00garbage", source="blob")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    Tokenizer.from_model_file(tmp_path / "missing.model")
  with pytest.raises(ValueError, match=r"token ids \[262144\] outside the vocabulary"):
    tok.decode([5, 262144])
  with pytest.raises(TypeError, match="expects a str"):
    tok.encode([1, 2])
