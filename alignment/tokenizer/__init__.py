"""Text <-> token ids for Gemma models (SentencePiece)."""

from alignment.tokenizer.tokenizer import Tokenizer
