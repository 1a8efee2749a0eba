"""train/instruct.py: random templates, packing, answer-only labels, held-out clusters, and a run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from data.batching import InstructBatcher
from data.prompts import PromptEncoder
from data.tasks import TaskDataError, read_instructions
from data.templates import instruction_prompt, instruction_text
from data.tokenizer import Tokenizer
from eval import instruct as ev
from eval.scoring import Scorer
from metalm import MetaLM
from metalm.docking import docked_mask
from metalm.loss import IGNORE_INDEX
from train.instruction_tuning import split_tasks

ROOT = Path(__file__).resolve().parents[1]


def batcher(world, pretrained, pack=True, rank=0, world_size=1, encode=True, seq_len=256):
    model, tok = MetaLM.from_pretrained(pretrained), Tokenizer.load(pretrained)
    examples, _ = split_tasks(read_instructions(world / "instructions_train.jsonl").examples, {"count", "truth"})
    return InstructBatcher(examples, PromptEncoder(model, tok), tok, 4, seq_len, 0, encode, pack, rank, world_size)


def test_held_out_clusters_never_reach_training(world):
    data = read_instructions(world / "instructions_train.jsonl")
    train, held = split_tasks(data.examples, {"count", "truth"})
    assert {e.task for e in held} == {"count", "truth"} and not {e.task for e in train} & {"count", "truth"}
    assert len(train) + len(held) == len(data)


def test_plan_packs_every_example_once_within_seq_len_with_mixed_templates(world, pretrained):
    b = batcher(world, pretrained, seq_len=256)
    rows = b.plan(0)
    used = Counter(i for row in rows for i, _ in row)
    assert sorted(used) == list(range(len(b.examples))) and set(used.values()) == {1}
    assert all(sum(b.length(b.examples[i], t) for i, t in row) <= 256 for row in rows)
    assert len(rows) < len(b.examples) / 1.5  # packing puts several examples in a row
    assert len({t for row in rows for _, t in row}) > 1  # templates are drawn at random
    assert b.plan(0) == rows and batcher(world, pretrained, seq_len=256).plan(1) != rows


def test_labels_are_the_outputs_only_and_never_docked(world, pretrained):
    b = batcher(world, pretrained)
    batch = b.batch(0)
    docked = docked_mask(batch.docks, *batch.input_ids.shape, batch.input_ids.device)
    assert not (docked & (batch.labels != IGNORE_INDEX)).any()
    assert {d.encoder for d in batch.docks} == {"text", "vision"} or {d.encoder for d in batch.docks} == {"text"}
    for r, row in enumerate(b.rows_of(0)):
        want = []
        for i, _ in row:
            want += b.tok.encode(" " + b.examples[i].output.strip()) + [b.tok.eos_id]
        assert batch.labels[r][batch.labels[r] != IGNORE_INDEX].tolist() == want
    # the measured lengths are the real ones
    row = b.rows_of(0)[0]
    assert int(batch.attention_mask[0].sum()) == sum(b.length(b.examples[i], t) for i, t in row)


def test_batches_are_pure_functions_of_their_index_and_ranks_disjoint(world, pretrained):
    b = batcher(world, pretrained)
    steps0 = len(b.plan(0)) // 4
    late = steps0 + 1  # in the second epoch
    again = batcher(world, pretrained)
    assert torch.equal(b.batch(late).input_ids, again.batch(late).input_ids)
    r0, r1 = batcher(world, pretrained, rank=0, world_size=2), batcher(world, pretrained, rank=1, world_size=2)
    for step in range(2):
        a = {i for row in r0.rows_of(step) for i, _ in row}
        c = {i for row in r1.rows_of(step) for i, _ in row}
        assert a and c and not a & c


def test_unpacked_rows_hold_one_example(world, pretrained):
    b = batcher(world, pretrained, pack=False)
    assert all(len(row) == 1 for row in b.plan(0))


def test_instruction_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "ins.jsonl"
    f.write_text('{"instruction": "Count.", "output": "two"}\n{"instruction": "", "output": "x"}\n')
    with pytest.raises(TaskDataError, match=r"ins.jsonl:2: field 'instruction' is empty"):
        read_instructions(f)
    assert len(read_instructions(f, on_error="skip")) == 1
    f.write_text('{"instruction": "Look.", "output": "red", "image": "missing.png"}\n{"output": "x"}\n')
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_instructions(f)
    f.write_text('{"instruction": "Look.", "output": "red"}\n{"output": "x"}\n')
    with pytest.raises(TaskDataError, match=r"ins.jsonl:2: missing field 'instruction'"):
        read_instructions(f)


def test_instruct_end_to_end_reports_held_out_clusters_before_and_after(world, pretrained, tmp_path):
    out = tmp_path / "ins"
    args = ["--init_from", str(pretrained), "--world", str(world), "--out", str(out), "--eval_limit", "3"]
    args += "--max_steps 4 --batch_size 2 --eval_batches 1 --eval_every 0 --log_every 1 --peak_flops 1e11".split()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    proc = subprocess.run(
        launcher + [str(ROOT / "train" / "instruct.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    table = summary["clusters"]
    assert {t for t, row in table.items() if row["kind"] == "held out"} == {"yesno", "count"}
    assert all(0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0 for row in table.values())
    ranked = {t for t, row in table.items() if "option_chance" in row}  # clusters whose examples list options
    assert {"yesno", "count", "vqa", "truth"} <= ranked and not {"caption", "colors", "change"} & ranked
    for task, chance in (("yesno", 1 / 2), ("count", 1 / 3), ("truth", 1 / 2)):
        assert table[task]["option_chance"] == pytest.approx(chance)
    for task in ranked:
        assert 0.0 <= table[task]["option_before"] <= 1.0 and 0.0 <= table[task]["option_after"] <= 1.0
    assert MetaLM.from_pretrained(out / "final") is not None


def test_options_are_read_checked_and_shown(tmp_path):

    rows = [
        {"instruction": "Is it red?", "output": "yes", "options": ["yes", "no"]},
        {"instruction": "Describe it.", "output": "a red circle.", "options": None},
        {"instruction": "Hi", "output": "x"},
    ]
    f = tmp_path / "ins.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_instructions(f).examples
    assert [e.options for e in ex] == [("yes", "no"), (), ()]
    assert instruction_text(ex[0].instruction, "", 0, ex[0].options) == "Is it red?\nOptions: yes, no"
    assert instruction_text("Do it.", "in", 1, ("a", "b")) == "Instruction: Do it.\nInput: in\nOptions: a, b"
    assert instruction_text("Do it.", "in", 1) == "Instruction: Do it.\nInput: in"
    bad = [
        (["yes"], "a list of at least 2 strings"),
        (["yes", "yes"], "distinct"),
        (["maybe", "no"], "output 'yes' is not one of the options"),
        ("yes", "a list"),
    ]
    for options, message in bad:
        f.write_text(json.dumps({"instruction": "Is it red?", "output": "yes", "options": options}) + "\n")
        with pytest.raises(TaskDataError, match=f"ins.jsonl:1: .*{message}"):
            read_instructions(f)


def test_eval_rank_classifies_examples_with_options_and_agrees_with_its_predictions(world, pretrained, tmp_path):

    rows = [json.loads(line) for line in (world / "instructions_val.jsonl").read_text().splitlines()]
    image = next(r["image"] for r in rows if r["image"])
    mine = [
        {
            "task": "yesno",
            "instruction": "Say yes or no.",
            "image": image,
            "input": "is it red?",
            "output": a,
            "options": ["yes", "no"],
        }
        for a in ("yes", "no", "no")
    ]
    mine += [
        {"task": "caption", "instruction": "Describe it.", "image": image, "output": f"a {c} circle."}
        for c in ("red", "blue")
    ]
    mine += [
        {
            "task": "truth",
            "instruction": "True?",
            "input": "scene: a red circle. claim: it is red.",
            "output": a,
            "options": ["yes", "no", "maybe"],
        }
        for a in ("yes", "no")
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in mine))
    out = tmp_path / "r.json"
    args = [
        "--checkpoint",
        str(pretrained),
        "--data",
        str(data),
        "--image-root",
        str(world),
        "--out",
        str(out),
        "--max-new-tokens",
        "2",
        "--batch-size",
        "4",
    ]
    result = ev.main(args)
    entry = result["results"][0]
    assert {k for k in entry if k.startswith("option_")} == {
        f"option_{m}/{t}" for m in ("accuracy", "chance", "majority") for t in ("yesno", "truth")
    }
    assert entry["option_majority/yesno"] == pytest.approx(2 / 3) and entry["option_majority/truth"] == 0.5
    rows = [json.loads(line) for line in Path(result["predictions"]).read_text().splitlines()]
    scorer = Scorer.from_checkpoint(pretrained, progress=False)
    for task, n in (("yesno", 2), ("truth", 3)):
        mine = [r for r in rows if r["task"] == task]
        hits = [r["option"] == r["expected"] for r in mine]
        assert entry[f"option_accuracy/{task}"]["mean"] == pytest.approx(sum(hits) / len(hits))
        assert entry[f"option_chance/{task}"] == pytest.approx(1 / n)
    assert not any("option" in r for r in rows if r["task"] == "caption")
    # the pick is the option the model scores highest after "Assistant:"
    data = {e.id: e for e in read_instructions(data, world).examples}
    for row in rows:
        ex = data[row["id"]]
        if ex.options:
            query = instruction_prompt(ex, 0, scorer.prompts.text is not None)
            scores = scorer.score([(query, " " + o) for o in ex.options])
            assert row["option"] == ex.options[max(range(len(ex.options)), key=lambda i: scores[i].logprob)]
