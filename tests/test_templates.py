"""Prompt templates: the paper's Alpaca text, Gemma turns, preambles, file loading."""

import json

import pytest

from alignment.prompts import ALPACA, GEMMA_CHAT, get_template, load_alpaca_style_template


def test_alpaca_template_matches_the_papers_config(data_dir):
  paper = load_alpaca_style_template(data_dir / "safety-tuned-llamas/configs/alpaca.json")
  assert ALPACA.format("Name a fruit.") == paper.format("Name a fruit.")
  assert ALPACA.format("Translate.", "Hola") == paper.format("Translate.", "Hola")
  assert ALPACA.response_split == paper.response_split.strip()


def test_preamble_placement():
  assert GEMMA_CHAT.format("Hi {there}", system="Be safe.") == (
      "<start_of_turn>user\nBe safe.\n\nHi {there}<end_of_turn>\n<start_of_turn>model\n")
  assert ALPACA.format("Hi", system="Be safe.").startswith("Be safe.\n\nBelow is an instruction")
  assert GEMMA_CHAT.split_response(GEMMA_CHAT.format("Q") + "Answer.") == "Answer."


def test_template_errors(tmp_path):
  with pytest.raises(KeyError, match="unknown prompt template"):
    get_template("llama")
  bad = tmp_path / "t.json"
  bad.write_text(json.dumps({"prompt_input": "{instruction}"}))
  with pytest.raises(ValueError, match=r"t.json: template is missing field\(s\) prompt_no_input"):
    load_alpaca_style_template(bad)
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    load_alpaca_style_template(bad)
