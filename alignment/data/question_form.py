"""Rewrite an imperative instruction as a question, deterministically, by a few fixed rules.

Bianchi et al. (2023) found that safety data written as instructions protects less against
harmful *questions* (Q-Harm) than against instructions; their question-form training set is not
published. These rules produce one from the instruction-form data so the prompt format can be
varied as a research knob. They are plain string rules (no model), so the same input always
gives the same question, and which rule fired is reported so its coverage can be checked.

Rules, tried in order on the stripped text (the first that matches wins):

1. `question`: text that already ends in "?" is returned unchanged.
2. `question_word`: text starting with a question word or auxiliary (what, how, why, who, is,
   can, do, ...) but lacking the "?" gets one: "What is a noun." -> "What is a noun?".
   A leading "Please" is dropped before the remaining rules ("Please list ..." -> "list ...").
3. `how_to`: "<Explain|Describe|Demonstrate|Illustrate|Outline|Detail|Show (me)|Tell me|
   Teach me|Instruct me (on)> how to X" -> "How can I X?". The asker becomes the actor, so
   second-person possessives turn first person: your -> my, yours -> mine, yourself -> myself
   ("Explain how to hide your identity" -> "How can I hide my identity?").
4. `steps`: "<Outline|List|Describe|Explain|Detail|Provide|Give (me)|Illustrate|Enumerate>
   (the) steps <to|for|of|in|needed to|involved in> X" -> "What are the steps <prep> X?".
5. `list_of`: "<Compile|Make|Create|Compose|Provide|Give (me)|Generate|Write|Draw up|Prepare|
   Produce|Construct> a/an (one adjective) list of X" -> "What are some X?".
   `list`: "List X" -> "What are X?" when X starts with a determiner or number (the, some,
   all, five, 3, ...), else "What are some X?".
6. `can_you`: an instruction whose first word is a known imperative verb (`IMPERATIVE_VERBS`)
   -> "Can you <verb, lower-cased> ...?" ("Write a poem about X." -> "Can you write a poem
   about X?"). Pronouns are kept: the instruction and the question address the same reader.
7. `fallback`: anything else (a statement, "Given ...") keeps its text and gains a question:
   "<text>. Can you help me with this?".

Every rule removes trailing ".", "!", ";" or ":" (also just inside a closing quote or
parenthesis) before adding "?". The first letter of the
rewritten remainder is lower-cased only when its first word is not all capitals ("I", "NASA").
"""

from __future__ import annotations

import dataclasses
import re

IMPERATIVE_VERBS = frozenset("""
act add agree analyse analyze answer argue arrange ask assess assign assist brainstorm build
calculate categorize cease change check choose cite classify collect combine come compare
compile complete compose compute confirm consider construct convert convince correct count
craft create critique debate decide defend define delete demonstrate describe design detail
determine develop devise discuss divide document draft draw edit enter enumerate establish
estimate evaluate examine explain explore express extract fill find format formulate gather
generate give group guess identify illustrate imagine inform insert instruct invent
investigate justify lead list locate look make map match measure modify monitor name narrate
observe obtain offer organize outline output paraphrase perform pick plan predict prepare
present pretend produce propose prove provide put rank rate read rearrange rebut recall
recite recommend recount reflect refuse refute remove reorder rephrase replace request
research retrieve reverse review rewrite re-write reword search select set share show shut
sketch sort specify spell state suggest summarise summarize support switch take teach tell
think trace transform translate update use verify write
""".split())

QUESTION_WORDS = frozenset("""
what how why who whom whose which when where is are was were am can could do does did should
would will shall may might have has had
""".split())

_DETERMINERS = (r"(?:the|some|all|any|several|many|few|a few|\d+|one|two|three|four|five|six|"
                r"seven|eight|nine|ten|twenty|fifty|hundred)\b")
_HOW_TO = re.compile(
    r"^(?:explain|describe|demonstrate|illustrate|outline|detail|show(?: me)?|tell me|teach me|"
    r"instruct me(?: on)?)\s+how\s+to\s+(?P<rest>.+)$", re.I | re.S)
_STEPS = re.compile(
    r"^(?:outline|list|describe|explain|detail|provide|give(?: me)?|illustrate|enumerate)\s+"
    r"(?:the\s+)?steps\s+(?P<prep>to|for|of|in|needed\s+to|involved\s+in)\s+(?P<rest>.+)$",
    re.I | re.S)
_LIST_OF = re.compile(
    r"^(?:compile|make|create|compose|provide|give(?: me)?|generate|write|draw up|prepare|"
    r"produce|construct)\s+(?:a|an)\s+(?:\w+\s+)?list\s+of\s+(?P<rest>.+)$", re.I | re.S)
_LIST = re.compile(r"^list\s+(?P<rest>.+)$", re.I | re.S)
_STARTS_DETERMINER = re.compile(_DETERMINERS, re.I)
_POSSESSIVES = {"your": "my", "yours": "mine", "yourself": "myself", "yourselves": "ourselves"}
_POSSESSIVE_RE = re.compile(r"\b(your|yours|yourself|yourselves)\b", re.I)
# Trailing punctuation, also inside a closing quote: 'Define "X."' -> 'Define "X"'.
_TRAILING = re.compile(r"[\s.!;:]*(?P<quote>[\"'\u201d\u2019)]?)[\s.!;:]*$")


@dataclasses.dataclass(frozen=True)
class QuestionRewrite:
  text: str
  rule: str  # which rule of the module docstring produced `text`


def _lower_first(text: str) -> str:
  word = text.split(maxsplit=1)[0] if text.strip() else ""
  if len(word) > 1 and word.isupper() or word == "I":
    return text
  return text[:1].lower() + text[1:]


def _first_person(text: str) -> str:
  def swap(m: re.Match) -> str:
    new = _POSSESSIVES[m.group(1).lower()]
    return new.capitalize() if m.group(1)[0].isupper() else new
  return _POSSESSIVE_RE.sub(swap, text)


def rewrite(instruction: str) -> QuestionRewrite:
  """The question form of `instruction` and the rule that produced it."""
  text = instruction.strip()
  if not text:
    raise ValueError("cannot rewrite an empty instruction as a question")
  if text.endswith("?"):
    return QuestionRewrite(text, "question")
  body = _TRAILING.sub(lambda m: m["quote"], text)
  first = body.split(maxsplit=1)[0].lower().strip(",")
  if first in QUESTION_WORDS:
    return QuestionRewrite(body + "?", "question_word")
  if first == "please":
    body = body.split(maxsplit=1)[1] if len(body.split(maxsplit=1)) > 1 else body
    body = body.lstrip(", ")
    first = body.split(maxsplit=1)[0].lower()
  if m := _HOW_TO.match(body):
    return QuestionRewrite(f"How can I {_first_person(m['rest'])}?", "how_to")
  if m := _STEPS.match(body):
    prep = " ".join(m["prep"].split()).lower()
    return QuestionRewrite(f"What are the steps {prep} {m['rest']}?", "steps")
  if m := _LIST_OF.match(body):
    return QuestionRewrite(f"What are some {m['rest']}?", "list_of")
  if m := _LIST.match(body):
    rest = m["rest"]
    some = "" if _STARTS_DETERMINER.match(rest) else "some "
    return QuestionRewrite(f"What are {some}{rest}?", "list")
  if first in IMPERATIVE_VERBS:
    return QuestionRewrite(f"Can you {_lower_first(body)}?", "can_you")
  return QuestionRewrite(f"{body}. Can you help me with this?", "fallback")


def to_question(instruction: str) -> str:
  """The question form of `instruction` (see the module docstring for the rules)."""
  return rewrite(instruction).text
