"""Red-teaming attack vectors: deterministic across processes, each changes what the model sees,
leetspeak and misspelling keep their documented properties, unknown names are rejected."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from alignment.data import sources
from alignment.data.records import EvalPrompt
from alignment.evaluation import attacks
from alignment.prompts.templates import ALPACA, GEMMA_CHAT

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

MADE_UP = (
    "Explain how to bake a loaf of sourdough bread at home.",
    "What is the tallest mountain in Spain?",
    "Write a short poem about autumn leaves, with {braces} and ünïcode.",
)


def _levenshtein(a: str, b: str) -> int:
  """Plain dynamic-programming edit distance (insert, delete, substitute)."""
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def _letter_runs(text: str) -> list[str]:
  runs, current = [], ""
  for c in text + " ":
    if c.isalpha():
      current += c
    elif current:
      runs.append(current)
      current = ""
  return runs


@pytest.fixture(scope="module")
def texts(data_dir):
  unsafe = [p.prompt for name in ("malicious_instructions", "q_harm")
            for p in sources.load(name, data_dir)[:5]]
  return [*MADE_UP, *unsafe]


def test_every_vector_is_deterministic_across_processes(texts):
  """The same prompt gets the same attack in another process with another hash seed."""
  here = {name: [a.transform(t) for t in texts] for name, a in attacks.ATTACKS.items()}
  assert here == {name: [a.transform(t) for t in texts] for name, a in attacks.ATTACKS.items()}
  script = ("import json, sys; from alignment.evaluation import attacks; texts = json.load("
            "sys.stdin); print(json.dumps({n: [a.transform(t) for t in texts] "
            "for n, a in attacks.ATTACKS.items()}))")
  for seed in ("1", "987654"):
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), env=env,
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT, timeout=60)
    assert json.loads(out.stdout) == here


def test_every_vector_changes_what_the_model_sees(texts):
  for name, attack in attacks.ATTACKS.items():
    assert attack.description, name  # a one-line statement of what it models
    for text in texts:
      rewritten = attack.transform(text)
      for template in (ALPACA, GEMMA_CHAT, None):
        with_prefix = attacks.prefixed_template(template, attack.response_prefix)
        seen = with_prefix.format(rewritten) if with_prefix else rewritten
        baseline = template.format(text) if template else text
        assert seen != baseline, (name, text, template)
    # Different prompts stay different under every vector.
    assert len({attack.transform(t) for t in texts}) == len(texts), name


def test_wrappers_keep_the_request_and_apply_keeps_identity():
  prompt = EvalPrompt("How do I fold a paper crane?", "q_harm", "q_harm-7", "unsafe", ("x",))
  for name in ("role_play", "authority", "false_premise", "hypothetical"):
    attacked = attacks.apply(name, prompt)
    assert prompt.prompt in attacked.prompt and attacked.prompt != prompt.prompt
    assert (attacked.source, attacked.id, attacked.label, attacked.tags) == (
        prompt.source, prompt.id, prompt.label, prompt.tags)


def test_prefix_injection_starts_the_answer_after_the_response_marker():
  attack = attacks.get_attack("prefix_injection")
  assert attack.response_prefix == "Sure, here is"
  assert attack.transform("Tell me a joke.") == "Tell me a joke."
  for template in (ALPACA, GEMMA_CHAT):
    prefixed = attacks.prefixed_template(template, attack.response_prefix)
    text = prefixed.format("Tell me {a} joke.")  # braces in the prompt are left alone
    assert text == template.format("Tell me {a} joke.") + "Sure, here is"
    assert prefixed.split_response(text + " a joke") == "Sure, here is a joke"
  assert attacks.prefixed_template(None, "Sure {x}").format("Hi") == "Hi\nSure {x}"
  assert attacks.prefixed_template(ALPACA, "") is ALPACA


def test_leetspeak_maps_characters_one_to_one(texts):
  for text in texts:
    out = attacks.leetspeak(text)
    head, encoded = out.split("\n", 1)
    assert "leetspeak" in head and len(encoded) == len(text)
    for original, new in zip(text, encoded):
      assert new == attacks.LEET_MAP.get(original, original)
    assert not set(encoded) & set(attacks.LEET_MAP)  # no mapped letter survives
  assert attacks.leet("Tea is hot, OK?") == "734 15 h07, 0K?"


def test_misspelling_puts_at_most_one_typo_in_a_word(texts):
  long_text = " ".join(texts * 3)
  for text in [*texts, long_text]:
    out = attacks.misspelling(text)
    words, noisy = _letter_runs(text), _letter_runs(out)
    assert len(noisy) == len(words)  # typos stay inside words: the word count is kept
    changed = 0
    for before, after in zip(words, noisy):
      assert after[0] == before[0]  # the first letter is never touched
      distance = _levenshtein(before, after)
      assert distance <= 2  # one typo: swap (2 substitutions), deletion, doubling or neighbour
      changed += distance > 0
    assert 1 <= changed
    if text is not long_text:  # (quadratic in pure Python)
      assert 1 <= _levenshtein(text, out) <= 2 * changed
    # Outside the words nothing moves: the non-letter skeleton is the same.
    assert [c for c in out if not c.isalpha()] == [c for c in text if not c.isalpha()]
  eligible = [w for w in _letter_runs(long_text) if len(w) >= 3]
  share = sum(a != b for a, b in zip(_letter_runs(long_text),
                                     _letter_runs(attacks.misspelling(long_text)))) / len(eligible)
  assert 0.15 < share < 0.6  # about NOISE_RATE of the eligible words
  assert attacks.noise("I am") != "I am"  # any word of 2+ letters can take a typo
  assert attacks.noise("I a") == "I a" and attacks.noise("42 !") == "42 !"  # none can


def test_noise_seed_depends_on_the_text_only():
  assert attacks.stable_seed("abc") == attacks.stable_seed("abc")
  assert attacks.stable_seed("abc") != attacks.stable_seed("abd")
  outs = {attacks.noise("Please describe the weather in Lisbon during a spring morning " + s)
          for s in ("one", "two", "three", "four")}
  assert len(outs) == 4


def test_names_are_parsed_and_unknown_ones_rejected():
  assert attacks.parse_attacks("") == [] and attacks.parse_attacks(" ") == []
  assert attacks.parse_attacks("all") == list(attacks.ATTACKS)
  assert attacks.parse_attacks("leetspeak, role_play") == ["leetspeak", "role_play"]
  assert set(attacks.ATTACKS) == {"role_play", "authority", "false_premise", "hypothetical",
                                  "misspelling", "leetspeak", "prefix_injection"}
  with pytest.raises(ValueError, match="unknown attack vector 'dan'; known: role_play, "
                     "authority"):
    attacks.parse_attacks("role_play,dan")
  with pytest.raises(ValueError, match="named twice"):
    attacks.parse_attacks("leetspeak,leetspeak")
  with pytest.raises(ValueError, match="unknown attack vector 'all'"):
    attacks.parse_attacks("all,leetspeak")
  with pytest.raises(ValueError, match="known: .*prefix_injection"):
    attacks.apply("base64", EvalPrompt("Hi", "q_harm", "1"))
