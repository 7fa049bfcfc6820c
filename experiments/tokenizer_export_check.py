"""Does transformers read the tokenizer the export writes as we do? On the Gemma 3 270M vocabulary.

  python -m experiments.tokenizer_export_check [--out=/tmp/gemma3_tokenizer]

Writes the embedded model's tokenizer files (`huggingface.tokenizer_files`, what every export
folder holds), loads them with `transformers.AutoTokenizer`, and counts the texts (the Alpaca
seed tasks from $ALIGNMENT_DATA_DIR, a chat turn, Unicode) whose ids (BOS included) and
decoding agree with our SentencePiece tokenizer; prints the first differing pieces of the rest.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app, flags
import transformers

from alignment.checkpoints.embedded import load_embedded
from alignment.checkpoints.huggingface import tokenizer_files

_OUT = flags.DEFINE_string("out", "/tmp/gemma3_tokenizer", "where to write the tokenizer files")
EXTRA = ("<start_of_turn>user\nHow do I  kill a   Python process?<end_of_turn>\n"
         "<start_of_turn>model\n", "  leading\ttab é 漢字 🙂")


def texts() -> list[str]:
  path = pathlib.Path(os.environ.get("ALIGNMENT_DATA_DIR", "../shared/data"),
                      "stanford_alpaca", "seed_tasks.jsonl")
  with open(path) as f:
    tasks = [json.loads(line) for line in f]
  return [f"{t['instruction']}\n{t['instances'][0]['input']}\n\n{t['instances'][0]['output']}"
          for t in tasks] + list(EXTRA)


def main(_) -> None:
  _, _, ours = load_embedded("float32")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  for name, data in tokenizer_files(ours).items():
    (out / name).write_bytes(data)
  start = time.perf_counter()
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  print(f"AutoTokenizer ({type(theirs).__name__}) loaded in {time.perf_counter() - start:.1f} s")
  items = texts()
  same = decoded = 0
  for text in items:
    a, b = ours.encode(text, add_bos=True), theirs(text)["input_ids"]
    same += a == b
    decoded += theirs.decode(ours.encode(text)) == text
    if a != b:
      i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
      print(f"differs at token {i} of {text[:60]!r}: ours {[ours.piece(j) for j in a[i:i + 3]]}"
            f" theirs {theirs.convert_ids_to_tokens(b[i:i + 3])}")
  print(f"{same}/{len(items)} texts give identical ids, {decoded}/{len(items)} decode back; "
        f"{sum(len(ours.encode(t)) for t in items)} tokens")


if __name__ == "__main__":
  app.run(main)
