"""Anthropic HH transcripts (Human/Assistant turns): the one rule that turns a chosen and a
rejected transcript into a prompt and two replies, shared by the HH sources and users' files
of such pairs."""

from __future__ import annotations

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
  """(prompt, chosen reply, rejected reply, clean) for two HH transcripts.

  The prompt is the shared text up to and including the last "\\n\\nAssistant:" both share, so
  `prompt + reply` reproduces each transcript exactly. `clean` is False when that is not the last
  Assistant marker of both (a few HH pairs differ earlier, or have a turn marker lost in the
  text); their replies then span more than one turn. Raises ValueError if nothing is shared.
  """
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  cut = chosen.rfind(ASSISTANT, 0, n)  # the last marker lying wholly in the common prefix
  if cut < 0:
    raise ValueError("chosen and rejected share no '\\n\\nAssistant:' prefix")
  end = cut + len(ASSISTANT)
  clean = chosen.rfind(ASSISTANT) == cut and rejected.rfind(ASSISTANT) == cut
  return chosen[:end], chosen[end:], rejected[end:], clean
