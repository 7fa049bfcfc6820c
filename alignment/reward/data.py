"""Preference pairs for reward models: a seeded train/validation split, tokenization that keeps
the end of long prompts, and a synthetic task for tests.

Only the HH test splits are available, so train and validation both come from them. The split
is by conversation opening (the first Human turn): HH holds several conversations that start
alike, and splitting them across train and validation would leak.

`alignment.data.tokenize.tokenize_pair` keeps whole prompts; HH prompts are multi-turn
transcripts whose *last* turns decide the preference, so here a long prompt loses its
beginning instead (BOS kept), and responses keep their start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment import schema
from alignment.data import sources, user_files
from alignment.data import tokenize as tok
from alignment.data.records import PreferencePair
from alignment.prompts.templates import PromptTemplate, get_template
from alignment.tokenizer import Tokenizer

_ASSISTANT = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class Split:
  train: list
  validation: list
  seed: int
  validation_fraction: float
  groups: int  # distinct conversation openings split between the two


def conversation_key(pair: PreferencePair) -> str:
  """The first turn of the prompt: pairs sharing it go to the same side of the split."""
  return pair.prompt.split(_ASSISTANT, 1)[0].strip()


def split_pairs(pairs: Sequence[PreferencePair], validation_fraction: float,
                seed: int) -> Split:
  """Shuffles conversation groups with `seed`; the first ones fill `validation_fraction`."""
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"data.validation_fraction={validation_fraction} must be in (0, 1)")
  if len(pairs) < 2:
    raise ValueError(f"need at least 2 pairs to split, got {len(pairs)}")
  groups: dict[str, list[int]] = {}
  for i, pair in enumerate(pairs):
    groups.setdefault(conversation_key(pair), []).append(i)
  keys = list(groups)
  order = np.random.default_rng(seed).permutation(len(keys))
  target = validation_fraction * len(pairs)
  val_idx: list[int] = []
  for k in order:
    if len(val_idx) >= target:
      break
    val_idx.extend(groups[keys[k]])
  chosen = set(val_idx)
  train = [p for i, p in enumerate(pairs) if i not in chosen]
  validation = [pairs[i] for i in sorted(chosen)]
  if not train or not validation:
    raise ValueError(f"split of {len(pairs)} pairs left an empty side; adjust "
                     f"data.validation_fraction={validation_fraction}")
  rng = np.random.default_rng(seed + 1)  # shuffled so that max_pairs caps take a fair sample
  return Split([train[i] for i in rng.permutation(len(train))],
               [validation[i] for i in rng.permutation(len(validation))],
               seed, validation_fraction, len(keys))


@dataclasses.dataclass
class PairStats:
  pairs: int = 0
  prompts_cut: int = 0  # prompts that lost their beginning
  responses_cut: int = 0  # pairs with a response that lost its end
  empty_skipped: int = 0  # pairs with an empty reply (a few HH rows): nothing to score


def tokenize_pair_keep_end(pair: PreferencePair, tokenizer: Tokenizer, max_length: int
                           ) -> tuple[tok.Pair, bool, bool]:
  """One pair -> {"prompt", "chosen", "rejected", "margin"} within `max_length` per side.

  The prompt gets what the longer response leaves, but at least half of `max_length`; past
  that it keeps BOS and its last tokens. Returns (pair, prompt cut, a response cut).
  """
  if max_length < 4:
    raise ValueError(f"data.max_length={max_length} is too short for a prompt and a reply")
  for name in ("chosen", "rejected"):
    if not getattr(pair, name).strip():
      raise ValueError(f"pair from {pair.source or '?'!r} (prompt {pair.prompt[:60]!r}): "
                       f"empty {name} response")
  prompt = tok.encode_prompt(pair.prompt, tokenizer)
  chosen = tok.encode_response(pair.chosen, None, tokenizer)
  rejected = tok.encode_response(pair.rejected, None, tokenizer)
  longest = max(len(chosen), len(rejected))
  budget = min(len(prompt), max(max_length - longest, max_length // 2))
  prompt_cut = budget < len(prompt)
  if prompt_cut:
    prompt = np.concatenate([prompt[:1], prompt[len(prompt) - (budget - 1):]])
  room = max_length - len(prompt)
  margin = np.float32(0.0 if pair.margin is None else pair.margin)
  return ({"prompt": prompt, "chosen": chosen[:room], "rejected": rejected[:room],
           "margin": margin}, prompt_cut, longest > room)


def tokenize_pairs_keep_end(pairs: Sequence[PreferencePair], tokenizer: Tokenizer,
                            max_length: int) -> tuple[list[tok.Pair], PairStats]:
  """Tokenizes every pair, skipping (and counting) those with an empty reply."""
  if not pairs:
    raise ValueError("no preference pairs to tokenize")
  out, stats = [], PairStats()
  for pair in pairs:
    if not pair.chosen.strip() or not pair.rejected.strip():
      stats.empty_skipped += 1
      continue
    tokenized, prompt_cut, response_cut = tokenize_pair_keep_end(pair, tokenizer, max_length)
    out.append(tokenized)
    stats.pairs += 1
    stats.prompts_cut += prompt_cut
    stats.responses_cut += response_cut
  if not out:
    raise ValueError(f"all {len(pairs)} pairs have an empty reply")
  return out, stats


def synthetic_pairs(num_pairs: int, vocab_size: int, max_length: int, seed: int,
                    marker: int = 7) -> list[tok.Pair]:
  """Token-id pairs where the chosen response contains `marker` (somewhere) and the rejected
  one does not: an easy preference a tiny random model can learn, for tests.

  Ids 0-9 are reserved (pad/eos/bos/markers); every other token is uniform in [10, vocab).
  """
  if vocab_size <= 10 or max_length < 8:
    raise ValueError("synthetic pairs need vocab_size > 10 and max_length >= 8")
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_pairs):
    prompt_len = int(rng.integers(2, max_length // 2))
    room = max_length - prompt_len
    prompt = np.concatenate([[2], rng.integers(10, vocab_size, prompt_len - 1)])
    sides = []
    for _ in range(2):
      n = int(rng.integers(2, room + 1))
      sides.append(np.concatenate([rng.integers(10, vocab_size, n - 1), [1]]))
    chosen, rejected = sides
    chosen[rng.integers(0, len(chosen) - 1)] = marker
    out.append({"prompt": prompt.astype(np.int32), "chosen": chosen.astype(np.int32),
                "rejected": rejected.astype(np.int32), "margin": np.float32(0.0)})
  return out


NAMED_SOURCES = ("hh_harmless", "hh_helpful", "synthetic")  # data.source, besides files


def check_data(d: Any) -> None:
  """Checks a preference job's `data` section (source names, template, split and counts),
  naming the field, before any model or data is loaded."""
  names = list(schema.names(d.source))
  if not names or any(n not in NAMED_SOURCES and not user_files.is_path(n) for n in names):
    raise ValueError(f"data.source={','.join(names)!r}; expected some of {NAMED_SOURCES} or "
                     "files of prompt/chosen/rejected pairs (.jsonl, .json, .csv, .parquet)")
  data_template(d)  # a misspelt template fails before the model loads
  if not 0.0 < d.validation_fraction < 1.0:
    raise ValueError(f"data.validation_fraction={d.validation_fraction} must be in (0, 1)")
  for name in ("max_pairs", "max_validation_pairs", "synthetic_pairs"):
    if d[name] < 0:
      raise ValueError(f"data.{name}={d[name]} must be >= 0 (0 = all)")
  if names == ["synthetic"] and d.synthetic_pairs < 2:
    raise ValueError("data.source='synthetic' needs data.synthetic_pairs >= 2")


def check_source_names(names: Sequence[str]) -> None:
  """A ValueError unless each name is a preference source or a file (its format is checked
  when read)."""
  unknown = [n for n in names if n not in sources.PREFERENCE_SOURCES
             and not user_files.is_path(n)]
  if unknown:
    raise ValueError(f"data.source: {unknown} are not preference sources; known: "
                     f"{', '.join(sources.PREFERENCE_SOURCES)} (or 'synthetic', or a "
                     "prompt/chosen/rejected file: .jsonl, .json, .csv, .parquet)")


def data_template(d: Any) -> PromptTemplate | None:
  """The template `data.template` names (None for '', prompts as stored); a ValueError naming
  the key for an unknown one."""
  name = d.get("template", "")
  if not name:
    return None
  try:
    return get_template(name)
  except KeyError as e:
    raise ValueError(f"data.template: {e.args[0]} (or '' for prompts as stored)") from None


def apply_template(pair: PreferencePair, template: PromptTemplate | None) -> PreferencePair:
  """The pair as the model sees it: the prompt in `template` (its response suffix after each
  reply, as SFT trains), or as stored when there is none (HH transcripts are already turns)."""
  if template is None:
    return pair
  return dataclasses.replace(pair, prompt=template.format(pair.prompt),
                             chosen=pair.chosen + template.response_suffix,
                             rejected=pair.rejected + template.response_suffix)


def build_pairs(config: Any, tokenizer: Tokenizer | None, vocab_size: int
                ) -> tuple[list, list, dict[str, Any]]:
  """(train pairs, validation pairs) tokenized, and a report of the split and truncation.

  Shared by the reward-model and DPO jobs. `config.data.source` names preference sources or
  files (`schema.names`) or 'synthetic'; the split keeps conversations together
  (`split_pairs`). `config.data.template` ('' = none) wraps each prompt after the split;
  `config.data.columns` renames a file's columns.
  """
  d = config.data
  names = list(schema.names(d.source))
  if not names:
    raise ValueError("data.source is empty; name preference sources, e.g. 'hh_harmless'")
  # One string, as when the key was comma-joined: a saved reward model's meta keeps it, and the
  # scorers compare it with a source name (reward/scorer.py).
  source = ",".join(names)
  if names == ["synthetic"]:
    pairs = synthetic_pairs(d.synthetic_pairs, vocab_size, d.max_length, config.seed)
    order = np.random.default_rng(config.seed).permutation(len(pairs))
    n_val = max(1, int(round(d.validation_fraction * len(pairs))))
    val = [pairs[i] for i in order[:n_val]]
    train = [pairs[i] for i in order[n_val:]]
    report: dict[str, Any] = {"source": "synthetic", "pairs": len(pairs)}
  else:
    check_source_names(names)
    template = data_template(d)
    if tokenizer is None:
      raise ValueError(f"data.source={source!r} needs a tokenizer: the checkpoint has none; "
                       "set model.tokenizer")
    records = [r for n in names for r in sources.load(
        n, config.get("data_dir") or None, columns=d.get("columns", ""), expect=PreferencePair)]
    split = split_pairs(records, d.validation_fraction, config.seed)
    train_records = [apply_template(p, template) for p in split.train[:d.max_pairs or None]]
    val_records = [apply_template(p, template)
                   for p in split.validation[:d.max_validation_pairs or None]]
    train, train_stats = tokenize_pairs_keep_end(train_records, tokenizer,
                                                             d.max_length)
    val, val_stats = tokenize_pairs_keep_end(val_records, tokenizer, d.max_length)
    report = {"source": source, "template": d.get("template", ""), "pairs": len(records),
              "groups": split.groups,
              "split_train": len(split.train), "split_validation": len(split.validation),
              "tokenize_train": dataclasses.asdict(train_stats),
              "tokenize_validation": dataclasses.asdict(val_stats)}
  report.update(seed=config.seed, validation_fraction=d.validation_fraction,
                train_pairs=len(train), validation_pairs=len(val), max_length=d.max_length)
  return train, val, report
