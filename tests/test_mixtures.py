"""Safety mixtures (determinism, nesting, counts, formats) and the question-form rewrite."""

from __future__ import annotations

import collections
import hashlib

import pytest

from alignment.data import mixtures, question_form, sources
from alignment.data.mixtures import MixtureConfig, build_mixture
from alignment.data.records import InstructionExample
from alignment.prompts import templates


@pytest.fixture(scope="module")
def pools(data_dir):
  """Alpaca and the safety data, read once for the module."""
  return {"alpaca": sources.load("alpaca", data_dir),
          "safety_instructions": sources.load("safety_instructions", data_dir)}


def _build(pools, data_dir, **kw):
  return build_mixture(MixtureConfig(**kw), data_dir, pools=pools)


def _key(ex: InstructionExample) -> tuple[str, str, str]:
  return ex.instruction, ex.input, ex.output


# ---------------------------------------------------------------------------------------------
# Question form.


@pytest.mark.parametrize("instruction, question, rule", [
    ("Write a poem about the sea.", "Can you write a poem about the sea?", "can_you"),
    ("Research the legal consequences of arson!", "Can you research the legal consequences of "
     "arson?", "can_you"),
    ('Define the term "foo."', 'Can you define the term "foo"?', "can_you"),
    ("Explain how to hide your identity.", "How can I hide my identity?", "how_to"),
    ("Tell me how to pick a lock", "How can I pick a lock?", "how_to"),
    ("Outline the steps to make fireworks.", "What are the steps to make fireworks?", "steps"),
    ("Illustrate the steps needed to fix a tyre.", "What are the steps needed to fix a tyre?",
     "steps"),
    ("Compile a list of insults for refugees.", "What are some insults for refugees?",
     "list_of"),
    ("Make a short list of fruits.", "What are some fruits?", "list_of"),
    ("List five ways to save money.", "What are five ways to save money?", "list"),
    ("List pranks for a computer.", "What are some pranks for a computer?", "list"),
    ("Please summarize the text.", "Can you summarize the text?", "can_you"),
    ("What is a noun.", "What is a noun?", "question_word"),
    ("How do I bake bread?", "How do I bake bread?", "question"),
    ("Given a list of numbers, sort them.", "Given a list of numbers, sort them. Can you help me "
     "with this?", "fallback"),
])
def test_question_rules(instruction, question, rule):
  r = question_form.rewrite(instruction)
  assert (r.text, r.rule) == (question, rule)
  assert question_form.to_question(question) == question  # a question stays as it is


def test_question_form_covers_the_safety_data(pools):
  rules = collections.Counter()
  for ex in pools["safety_instructions"]:
    r = question_form.rewrite(ex.instruction)
    assert r.text.endswith("?") and r.text[0].isupper()
    rules[r.rule] += 1
  # Every published safety instruction starts with an imperative verb: no fallback needed.
  assert rules["fallback"] == 0 and rules["question"] == 0
  assert sum(rules.values()) == 2483


def test_question_form_rejects_empty():
  with pytest.raises(ValueError, match="empty"):
    question_form.rewrite("  ")


# ---------------------------------------------------------------------------------------------
# Mixtures.


def test_paper_mixture_counts(pools, data_dir):
  examples, report = _build(pools, data_dir, num_safety=100)
  assert len(examples) == 20_100
  assert collections.Counter(ex.source for ex in examples) == {"alpaca": 20_000,
                                                               "safety_instructions": 100}
  # Alpaca's 28 records with an empty output are dropped before sampling.
  assert (report.num_base, report.num_safety, report.base_available) == (20_000, 100, 51_974)
  assert report.safety_fraction == pytest.approx(100 / 20_100)
  assert report.sha256 == hashlib.sha256(
      mixtures.serialize(examples, "alpaca")).hexdigest()
  assert "20000 of 51974" in report.to_markdown()
  assert "hygiene base/empty_output: 52002 -> 51974" in report.to_markdown()


def test_same_seed_same_bytes_other_seed_other_mixture(pools, data_dir):
  a, ra = _build(pools, data_dir, num_base=3000, num_safety=300, safety_format="question")
  b, rb = _build(pools, data_dir, num_base=3000, num_safety=300, safety_format="question")
  assert mixtures.serialize(a, "alpaca") == mixtures.serialize(b, "alpaca")
  assert ra.sha256 == rb.sha256
  c, rc = _build(pools, data_dir, num_base=3000, num_safety=300, safety_format="question", seed=1)
  assert rc.sha256 != ra.sha256
  assert {_key(x) for x in c} != {_key(x) for x in a}
  # Changing one character of one example changes the hash.
  changed = list(a)
  changed[7] = InstructionExample(**{**changed[7].__dict__, "output": changed[7].output + "."})
  assert mixtures.mixture_sha256(changed, MixtureConfig()) != ra.sha256


def test_safety_counts_are_nested_and_base_is_shared(pools, data_dir):
  seen_base, previous = None, set()
  for k in mixtures.PAPER_SAFETY_COUNTS:
    examples, report = _build(pools, data_dir, num_base=2000, num_safety=k, shuffle=False)
    base = [_key(x) for x in examples if x.source == "alpaca"]
    safety = {_key(x) for x in examples if x.source == "safety_instructions"}
    assert len(base) == 2000 and report.num_safety == k
    assert len([x for x in examples if x.source == "safety_instructions"]) == k
    if seen_base is not None:
      assert base == seen_base  # the same base subset for every K
    assert previous <= safety  # the 100 are inside the 300, ...
    seen_base, previous = base, safety


def test_safety_fraction(pools, data_dir):
  examples, report = _build(pools, data_dir, num_base=1000, safety_fraction=0.2)
  assert report.num_safety == 250 and len(examples) == 1250
  assert report.safety_fraction == pytest.approx(0.2)
  with pytest.raises(ValueError, match="only 2483"):
    _build(pools, data_dir, num_base=1000, num_safety=3000)
  with pytest.raises(ValueError, match="safety_fraction"):
    MixtureConfig(safety_fraction=1.0)
  with pytest.raises(ValueError, match="safety_format"):
    MixtureConfig(safety_format="questions")
  with pytest.raises(ValueError, match="unknown data source"):
    MixtureConfig(safety_source="nope")


def test_question_format_changes_only_safety_prompts(pools, data_dir):
  inst, _ = _build(pools, data_dir, num_base=500, num_safety=200, shuffle=False)
  ques, report = _build(pools, data_dir, num_base=500, num_safety=200, shuffle=False,
                        safety_format="question")
  assert sum(report.question_rules.values()) == 200
  for a, b in zip(inst, ques):
    if a.source == "alpaca":
      assert a == b
    else:
      assert b.prompt_format == "question" and b.output == a.output
      assert b.instruction == question_form.to_question(a.instruction)


def test_templates_and_system_prompt(pools, data_dir):
  examples, report = _build(pools, data_dir, num_base=50, num_safety=10, template="gemma_chat",
                            system_prompt="You are a careful assistant.")
  ex = next(x for x in examples if not x.input)
  prompt, target = mixtures.format_example(ex, "gemma_chat", "You are a careful assistant.")
  assert prompt == templates.GEMMA_CHAT.format(ex.instruction, "", "You are a careful assistant.")
  assert "<start_of_turn>user\n" in prompt and target == ex.output + "<end_of_turn>"
  alpaca_prompt, alpaca_target = mixtures.format_example(ex, "alpaca")
  assert alpaca_prompt.endswith(f"### Instruction:\n{ex.instruction}\n\n### Response:\n")
  assert alpaca_target == ex.output
  plain, plain_report = _build(pools, data_dir, num_base=50, num_safety=10)
  assert [_key(x) for x in plain] == [_key(x) for x in examples]  # same records
  assert plain_report.sha256 != report.sha256  # different text the model sees
  with pytest.raises(KeyError, match="unknown prompt template"):
    MixtureConfig(template="chatml")


def test_hygiene_before_sampling(pools, data_dir):
  examples, report = _build(pools, data_dir, num_base=1000, num_safety=100,
                            remove_eval_overlap=True, eval_sources=("i_alpaca",))
  (base_step,) = [h for h in report.hygiene
                  if h["pool"] == "base" and h["step"] != "empty_output"]
  assert base_step["step"] == "eval_overlap"
  assert base_step["removed"] == 50  # every I-Alpaca prompt is in Alpaca
  assert report.base_available == 52_002 - 28 - 50
  i_alpaca = {p.prompt for p in sources.load("i_alpaca", data_dir)}
  assert not any(x.instruction in i_alpaca for x in examples)
  assert len(examples) == 1100
  # Dedup (on a 3,000-row slice of Alpaca, to stay fast).
  small = {**pools, "alpaca": pools["alpaca"][:3000]}
  examples, report = _build(small, data_dir, num_base=1000, num_safety=100, dedup=True)
  steps = {(h["pool"], h["step"]): h for h in report.hygiene}
  assert steps["safety", "exact_dedup"]["removed"] == 4  # 2,483 rows, 2,479 distinct
  assert report.safety_available == 2483 - sum(
      h["removed"] for (pool, _), h in steps.items() if pool == "safety")
  assert len(examples) == 1100


def test_held_out_examples_are_the_same_for_every_k(pools, data_dir):
  """SFT's held-out loss is comparable across K: with one seed, the held-out base examples
  do not depend on K, and the training part keeps exactly N base + K safety examples."""
  held = []
  for k in (0, 60):
    examples, _ = _build(pools, data_dir, num_base=300 + 20, num_safety=k)
    train, held_out = mixtures.split_held_out(examples, "alpaca", 20)
    counts = collections.Counter(e.source for e in train)
    assert counts["alpaca"] == 300 and counts.get("safety_instructions", 0) == k
    assert len(held_out) == 20 and {e.source for e in held_out} == {"alpaca"}
    assert not {_key(e) for e in held_out} & {_key(e) for e in train}
    held.append([_key(e) for e in held_out])
  assert held[0] == held[1]
