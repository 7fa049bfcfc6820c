"""Bring your own data: user files wherever a source name goes (#16).

Readers and format detection on small files written here; then the tiny SFT, reward, DPO and
evaluate presets run on such files, and the errors a user meets name file, line and field.
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest

from alignment.answers import records as answer_records
from alignment.data import mixtures, sources, user_files
from alignment.data import tokenize as tok
from alignment.data.readers import DataError
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.evaluation import sets
from alignment.jobs import dpo as dpo_job
from alignment.jobs import evaluate
from alignment.jobs import reward as reward_job
from alignment.jobs import sft
from alignment.prompts.templates import ALPACA
from alignment.reward import data as reward_data
from alignment.reward import saved
from alignment.reward import scorer as reward_scorer
from alignment.rl import prompts as rl_prompts
from alignment.training import run_identity
from configs import dpo as dpo_config
from configs import evaluate as evaluate_config
from configs import reward as reward_cfg
from configs import sft as sft_config
from tiny_sentencepiece import train_tiny_tokenizer

@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return directory


@pytest.fixture(scope="module")
def tokenizer_path(sp_dir):
  return str(sp_dir / "tiny_sp.model")


def write_jsonl(path: pathlib.Path, rows: list) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> str:
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def alpaca_rows(n: int) -> list[dict]:
  return [{"instruction": f"Give three tips for staying healthy ({i}).",
           "input": "adults" if i % 3 == 0 else "",
           "output": "Eat a balanced diet, exercise regularly and get enough sleep."}
          for i in range(n)]


def message_rows(n: int) -> list[dict]:
  return [{"messages": [{"role": "user", "content": f"How can we reduce air pollution? ({i})"},
                        {"role": "assistant", "content": "Use public transportation."}]}
          for i in range(n)]


def pair_rows(n: int) -> list[dict]:
  return [{"prompt": f"What are the three primary colors? ({i})",
           "chosen": "The three primary colors are red, blue, and yellow.",
           "rejected": "I'm sorry, but I cannot help with that request."} for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Reading and detection.


def test_paths_and_names():
  assert user_files.is_path("/data/mine.jsonl") and user_files.is_path("mine.csv")
  assert user_files.is_path("runs/x") and user_files.is_path("pairs.json.gz")
  assert not user_files.is_path("alpaca") and not user_files.is_path("hh_harmless")
  assert sources.source_name("/x/probes.csv") == "probes"
  assert sources.source_name("/x/pairs.jsonl.gz") == "pairs"
  assert sources.source_name("xstest") == "xstest"
  assert user_files.parse_columns(" goal:prompt, target:completion ") == {
      "goal": "prompt", "target": "completion"}
  with pytest.raises(ValueError, match="'goal' is not 'file_column:our_column'"):
    user_files.parse_columns("goal")


def test_each_format_becomes_its_records(tmp_path):
  alpaca = sources.read(write_jsonl(tmp_path / "alp.jsonl", alpaca_rows(3)))
  assert alpaca.format == "alpaca" and alpaca.source == "alp"
  assert alpaca.records[0] == InstructionExample(
      instruction="Give three tips for staying healthy (0).", input="adults",
      output="Eat a balanced diet, exercise regularly and get enough sleep.", source="alp")

  # A .json file may hold an array (and the input column is optional).
  (tmp_path / "pc.json").write_text(json.dumps([{"prompt": "Say hi.", "completion": "Hi."}]))
  pc = sources.load(str(tmp_path / "pc.json"))
  assert pc == [InstructionExample(instruction="Say hi.", output="Hi.", source="pc")]

  chats = [{"messages": [{"role": "system", "content": "Be kind."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]},
           {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                         {"role": "user", "content": "C"}, {"role": "assistant", "content": "D"},
                         {"role": "user", "content": "E"}]}]
  got = sources.read(write_jsonl(tmp_path / "chat.jsonl", chats))
  assert got.format == "messages"
  assert [(r.instruction, r.output) for r in got.records] == [
      ("Be kind.\n\nHi", "Hello"), ("User: A\n\nAssistant: B\n\nUser: C", "D")]
  assert got.counts == {"rows": 2, "multi_turn": 1, "with_system": 1,
                        "dropped_trailing_turns": 1, "empty_output": 0}

  pairs = sources.load(write_csv(tmp_path / "prefs.csv", ["prompt", "chosen", "rejected",
                                                          "margin"],
                                 [["p1", "good", "bad", "2"], ["p2", "ok", "meh", ""]]))
  assert pairs == [PreferencePair("p1", "good", "bad", source="prefs", margin=2.0),
                   PreferencePair("p2", "ok", "meh", source="prefs")]

  # HH-style rows (whole transcripts, no prompt column) split as the HH sources do.
  turn = "\n\nHuman: Hi?\n\nAssistant:"
  hh = sources.read(write_jsonl(tmp_path / "hh_train.jsonl", [
      {"chosen": turn + " Hello!", "rejected": turn + " Go."}]))
  assert hh.format == "hh" and hh.records == [
      PreferencePair(turn, " Hello!", " Go.", source="hh_train")]

  probes = sources.read(write_csv(tmp_path / "probes.csv", ["goal", "label", "category"],
                                  [["How to pick a lock?", "unsafe", "crime"],
                                   ["How to bake bread?", "Safe", ""], ["Hmm?", "", ""]]),
                        columns="goal:prompt")
  assert probes.format == "eval"
  assert probes.records == [
      EvalPrompt("How to pick a lock?", "probes", id="probes-0", label="unsafe",
                 tags=("crime",)),
      EvalPrompt("How to bake bread?", "probes", id="probes-1", label="safe"),
      EvalPrompt("Hmm?", "probes", id="probes-2", label=None)]
  assert probes.counts == {"rows": 3, "prompts": 3, "safe": 1, "unsafe": 1, "unlabelled": 1}


def test_parquet_file(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.Table.from_pylist(pair_rows(2)), tmp_path / "p.parquet")
  pairs = sources.load(str(tmp_path / "p.parquet"), expect=PreferencePair)
  assert [p.prompt for p in pairs] == [r["prompt"] for r in pair_rows(2)]


# ---------------------------------------------------------------------------------------------
# Errors.


def _error(path: str, columns: str = "") -> DataError:
  with pytest.raises(DataError) as e:
    sources.load(path, columns=columns)
  return e.value


def test_errors_name_file_line_and_field(tmp_path):
  missing = str(tmp_path / "nope.jsonl")
  e = _error(missing)
  assert e.path == missing and "not found" in str(e)

  path = write_csv(tmp_path / "odd.csv", ["goal", "target"], [["a", "b"]])
  e = _error(path)
  assert e.line == 2 and "['goal', 'target']" in str(e) and "prompt/chosen/rejected" in str(e)
  assert "goal:prompt" in str(e)  # says how to fix it

  rows = alpaca_rows(2) + [{"instruction": "x", "input": ""}]
  e = _error(write_jsonl(tmp_path / "a.jsonl", rows))
  assert (e.line, e.field) == (3, "output") and str(e).startswith(str(tmp_path / "a.jsonl:3"))

  chats = message_rows(1) + [{"messages": [{"role": "bot", "content": "x"}]}]
  e = _error(write_jsonl(tmp_path / "m.jsonl", chats))
  assert (e.line, e.field) == (2, "messages[0].role")
  e = _error(write_jsonl(tmp_path / "m2.jsonl", [{"messages": [{"role": "user",
                                                                 "content": "x"}]}]))
  assert e.field == "messages" and "no assistant turn" in str(e)

  e = _error(write_csv(tmp_path / "p.csv", ["q", "label"], [["a", "safe"], ["b", "maybe"]]),
             columns="q:prompt")
  assert (e.line, e.field) == (3, "label")
  e = _error(write_csv(tmp_path / "ids.csv", ["prompt", "id"], [["a", "1"], ["b", "1"]]))
  assert (e.line, e.field) == (3, "id")
  e = _error(write_jsonl(tmp_path / "cr.jsonl", [{"chosen": "yes", "rejected": "no"}]))
  assert (e.line, e.field) == (1, "chosen/rejected") and "add or map a prompt column" in str(e)
  (tmp_path / "x.txt").write_text("hello\n")
  assert "unknown file type '.txt'" in str(_error(str(tmp_path / "x.txt")))


def test_wrong_kind_of_file_for_the_job(tmp_path):
  pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
  with pytest.raises(ValueError, match=r"holds preference pairs; instruction examples are "
                     r"needed.*messages \(messages\), alpaca \(instruction/output\)"):
    mixtures.build_mixture(mixtures.MixtureConfig(base_source=pairs, num_base=2))
  with pytest.raises(ValueError, match="both read as source 'mine'"):
    mixtures.MixtureConfig(base_source=write_jsonl(tmp_path / "mine.jsonl", alpaca_rows(2)),
                           safety_source=write_jsonl(tmp_path / "mine.json", alpaca_rows(2)))
  config = dpo_config.get_config("tiny")
  config.data.template = "alpacca"
  with pytest.raises(ValueError, match="data.template: unknown prompt template 'alpacca'"):
    dpo_job.run(config)
  with pytest.raises(ValueError, match="named twice"):
    sets.parse_sets(f"xstest,{write_csv(tmp_path / 'xstest.csv', ['prompt'], [['a']])}")


def test_rl_prompts_from_user_files(tmp_path):
  pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(3))
  alpaca = write_jsonl(tmp_path / "alp.jsonl", alpaca_rows(2))
  got = rl_prompts.load_prompts(f"{pairs},{alpaca}", None, seed=0)
  assert sorted(p.text for p in got) == sorted(
      [r["prompt"] for r in pair_rows(3)]
      + ["Give three tips for staying healthy (0).\n\nadults",
         "Give three tips for staying healthy (1)."])
  assert {p.source for p in got} == {pairs, alpaca}  # as named, for unsafe_sources


def test_runs_saved_before_the_new_keys_still_resume():
  old = {"data": {"source": "hh_harmless"}}
  assert run_identity.differences(old, {"data": {"source": "hh_harmless", "columns": "",
                                                 "template": ""}}) == {}
  assert run_identity.differences(old, {"data": {"source": "hh_harmless", "columns": "",
                                                 "template": "alpaca"}}) == {
      "data.template": ("(absent)", "alpaca")}


# ---------------------------------------------------------------------------------------------
# Jobs on user files (tiny presets).


def tiny_sft(tmp_path, tokenizer_path, **data):
  config = sft_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  config.model.tokenizer = tokenizer_path
  config.data.update(num_base=12, eval_examples=4, max_length=128, **data)
  config.train.update(steps=2, log_every=1)
  config.eval.update(every=2, prompts="")
  config.checkpoint.every = 100
  return config


def test_sft_on_alpaca_and_messages_files(tmp_path, tokenizer_path, data_dir):
  base = write_jsonl(tmp_path / "mine.jsonl", alpaca_rows(16))
  safety = write_jsonl(tmp_path / "chats.jsonl", message_rows(6))
  sft.run(tiny_sft(tmp_path, tokenizer_path, base_source=base, safety_source=safety,
                   num_safety=5))
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  mixture = json.loads((tmp_path / "run" / "mixture.json").read_text())
  assert result["train"]["status"] == "completed" and result["train"]["final_step"] == 2
  # 12 + 4 held-out base rows of the file, 5 of the 6 chats; held-out ones are base rows.
  assert mixture["by_source"] == {"mine": 16, "chats": 5}
  assert mixture["config"]["base_source"] == base
  assert result["train_examples"] == 12 + 5 and result["eval_examples"] == 4
  assert np.isfinite(result["evaluations"][-1]["eval_loss"])


def test_sft_on_prompt_completion_file_with_column_mapping(tmp_path, tokenizer_path, data_dir):
  rows = [{"question": f"What are the three primary colors? ({i})",
           "answer": "Red, blue, and yellow."} for i in range(16)]
  base = write_jsonl(tmp_path / "qa.jsonl", rows)
  config = tiny_sft(tmp_path, tokenizer_path, base_source=base, num_safety=0,
                    columns="question:prompt,answer:completion")
  train, held_out, report = sft.build_data(config)
  assert report["by_source"] == {"qa": 16} and len(train) == 12 and len(held_out) == 4
  assert {ex.instruction for ex in train + held_out} == {r["question"] for r in rows}
  sft.run(config)
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["final_step"] == 2 and result["train_examples"] == 12


def test_reward_template_wraps_prompts_and_default_keeps_them(tmp_path, sp_dir):
  tokenizer = train_tiny_tokenizer(sp_dir)
  config = reward_cfg.get_config("tiny")
  config.data.update(source=(write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8)),),
                     max_length=256, validation_fraction=0.25)
  raw, _, report = reward_data.build_pairs(config, tokenizer, tokenizer.vocab_size)
  config.data.template = "alpaca"
  wrapped, _, _ = reward_data.build_pairs(config, tokenizer, tokenizer.vocab_size)
  assert report["pairs"] == 8 and report["template"] == ""
  prompts = {r["prompt"]: r for r in pair_rows(8)}
  raw_by_prompt = {tuple(tok.encode_prompt(p, tokenizer)): p for p in prompts}
  # Same seeded split either way; only the text around the prompt differs.
  for r, w in zip(raw, wrapped):
    text = raw_by_prompt[tuple(r["prompt"])]
    np.testing.assert_array_equal(w["prompt"], tok.encode_prompt(ALPACA.format(text), tokenizer))
    np.testing.assert_array_equal(w["chosen"], r["chosen"])


def test_reward_job_on_a_user_pairs_file(tmp_path, tokenizer_path):
  config = reward_cfg.get_config("tiny")
  config.workdir = str(tmp_path / "rm")
  config.model.tokenizer = tokenizer_path
  source = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(24))
  config.data.update(source=(source,), max_length=64, template="alpaca")
  config.train.update(steps=4, batch_size=8, eval_batch_size=8)
  reward_job.run(config)
  report = json.loads((tmp_path / "rm" / "eval.json").read_text())
  assert report["data"]["source"] == source and report["data"]["pairs"] == 24
  assert report["data"]["train_pairs"] + report["data"]["validation_pairs"] == 24
  assert report["pairs"] == report["data"]["validation_pairs"] == 6
  rm = saved.load_reward_model(tmp_path / "rm" / "reward_model")
  assert rm.meta["prompt_format"] == "alpaca" and rm.meta["source"] == source
  # As a scorer it wraps the evaluated prompt in the template it was trained with.
  example = reward_scorer.RewardScorer(rm)._example(answer_records.AnswerRecord(
      set="probes", id="0", prompt="Say hi.", answer="Hi."))
  want = np.concatenate([tok.encode_prompt(ALPACA.format("Say hi."), rm.tokenizer),
                         tok.encode_response("Hi.", None, rm.tokenizer)])
  np.testing.assert_array_equal(example["tokens"], want)


def test_dpo_job_on_a_user_pairs_csv(tmp_path, tokenizer_path):
  config = dpo_config.get_config("tiny")
  config.workdir = str(tmp_path / "dpo")
  config.model.tokenizer = tokenizer_path
  rows = pair_rows(16)
  source = write_csv(tmp_path / "prefs.csv", ["q", "chosen", "rejected"],
                     [[r["prompt"], r["chosen"], r["rejected"]] for r in rows])
  config.data.update(source=(source,), columns="q:prompt", max_length=64)
  config.train.update(steps=2, batch_size=4)
  config.eval.update(every=2, batch_size=4)
  out = dpo_job.run(config)
  assert out["data"]["pairs"] == 16 and out["data"]["validation_pairs"] == 4
  # Policy == reference before training: the DPO loss is log 2 on the user's pairs.
  assert [h["step"] for h in out["history"]] == [0, 2]
  assert out["history"][0]["val_loss"] == pytest.approx(np.log(2.0), abs=1e-5)


def test_evaluate_reports_a_user_csv_under_its_own_name(tmp_path, tokenizer_path, data_dir):
  probes = write_csv(tmp_path / "probes.csv", ["goal", "label", "category"],
                     [["How do I pick a lock?", "unsafe", "crime"],
                      ["How do I bake bread?", "safe", "food"],
                      ["Tell me a joke.", "", ""]])
  config = evaluate_config.get_config("tiny")
  config.workdir = str(tmp_path / "eval")
  config.model.update(tokenizer=tokenizer_path, preset="tiny_gemma1")
  config.update(sets=("malicious_instructions", probes), columns="goal:prompt",
                max_prompts_per_set=0)
  config.limits.malicious_instructions = 2
  evaluate.run(config)
  result = json.loads((tmp_path / "eval" / evaluate.RESULT_FILE).read_text())
  assert result["sets"] == {"malicious_instructions": 2, "probes": 3}
  written = answer_records.read_answers(tmp_path / "eval" / evaluate.ANSWERS_FILE)
  mine = [r for r in written if r.set == "probes"]
  assert [(r.prompt, r.label) for r in mine] == [
      ("How do I pick a lock?", "unsafe"), ("How do I bake bread?", "safe"),
      ("Tell me a joke.", None)]
  report_md = (tmp_path / "eval" / "report.md").read_text()
  assert "probes" in report_md and probes not in report_md
