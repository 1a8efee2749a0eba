"""Every benchmark script, end to end on its fixture in the published format, with a tiny random checkpoint.

The numbers a random model gets mean nothing; what is checked is that each script reads the real format, runs
every shot count and trial, writes a results JSON whose scores agree with its own predictions file (recomputed
here with the metric), and reports bad input as an error naming it or as counted skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import tiny_metalm

from data.tokenizer import Tokenizer
from data.world import generate_world
from eval import caption, glue, multiple_choice, nlvr2, snli_ve, vqa, world
from eval.metrics import cider_d, vqa_score

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def fixture_texts() -> list[str]:
    texts = []
    for path in FIX.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".tsv", ".csv", ".token", ".lst"):
            texts.append(path.read_text(encoding="utf-8"))
    return texts + ["Question: Answer: True False Neither positive negative yes no"] * 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random MetaLM with a vision and a native text encoder, and a BPE tokenizer, saved as training does."""
    out = tmp_path_factory.mktemp("ckpt") / "final"
    tok = Tokenizer.train(fixture_texts(), vocab_size=600)
    tiny_metalm(tok.vocab_size, max_len=1024).save_pretrained(out)
    tok.save(out)
    return out


def common(checkpoint, tmp_path, *extra) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "r.json"), "--batch_size", "4", *extra]


def predictions(result: dict) -> list[dict]:
    return [json.loads(line) for line in Path(result["predictions"]).read_text().splitlines()]


def test_glue_rte_zero_and_few_shot_with_all_calibrations(checkpoint, tmp_path, capsys):
    data = FIX / "rte" / "dev.tsv"
    result = glue.main(
        common(
            checkpoint,
            tmp_path,
            "--task",
            "rte",
            "--data",
            str(data),
            "--demos",
            str(data),
            "--shots",
            "0,2",
            "--trials",
            "2",
            "--calibration",
            "contextual",
        )
    )
    n = result["n"]
    assert n == 3 and [r["shots"] for r in result["results"]] == [0, 2]
    zero, two = result["results"]
    assert len(zero["none"]["trials"]) == 1 and len(two["none"]["trials"]) == 2
    assert "contextual" in zero and "True or False?" in result["template"]
    assert zero["score"] == zero["contextual"]["mean"]
    rows = predictions(result)
    assert len(rows) == n * 3  # 1 zero-shot trial + 2 two-shot trials
    # the reported accuracy is the predictions' accuracy
    for k, entry in ((0, zero), (2, two)):
        for t, acc in enumerate(entry["contextual"]["trials"]):
            trial = [r for r in rows if r["shots"] == k and r["trial"] == t]
            assert acc == pytest.approx(sum(r["prediction"] == r["label"] for r in trial) / n)
    out = capsys.readouterr().out
    assert "template" in out and "0-shot" in out and "2-shot" in out


def test_glue_sst2_and_mnli_prototypical(checkpoint, tmp_path):
    res = glue.main(
        common(
            checkpoint,
            tmp_path,
            "--task",
            "sst2",
            "--data",
            str(FIX / "sst2" / "dev.tsv"),
            "--calibration",
            "prototypical",
        )
    )
    assert res["n"] == 4 and "prototypical" in res["results"][0]
    mnli = glue.main(common(checkpoint, tmp_path, "--task", "mnli", "--data", str(FIX / "mnli" / "dev_matched.tsv")))
    assert {p["label"] for p in predictions(mnli)} <= {"True", "False", "Neither"}


def test_snli_ve_and_nlvr2_dock_their_images(checkpoint, tmp_path):
    snli, nlvr = FIX / "snli-ve", FIX / "nlvr2"
    files = ["--data", str(snli / "snli_ve_dev.jsonl"), "--images", str(snli / "flickr30k_images")]
    res = snli_ve.main(common(checkpoint, tmp_path, *files))
    assert res["n"] > 0 and res["template"].startswith("<image> ")
    files = ["--data", str(nlvr / "dev.json"), "--images", str(nlvr / "images"), "--demos", str(nlvr / "dev.json")]
    res = nlvr2.main(common(checkpoint, tmp_path, *files, "--shots", "1", "--trials", "1", "--icl_mode", "encoder"))
    assert res["n"] > 0 and res["template"].startswith("<image> <image> ") and res["icl_mode"] == "encoder"


@pytest.mark.parametrize(
    "task, files",
    [
        ("hellaswag", ["--data", "hellaswag/hellaswag_val.jsonl"]),
        ("piqa", ["--data", "piqa/valid.jsonl", "--labels", "piqa/valid-labels.lst"]),
        ("copa", ["--data", "copa/val.jsonl"]),
        ("storycloze", ["--data", "storycloze/cloze_test_val__spring2016.csv"]),
        ("winogrande", ["--data", "winogrande/dev.jsonl"]),
        ("arc-easy", ["--data", "arc-easy/ARC-Easy-Dev.jsonl"]),
        ("arc-challenge", ["--data", "arc-challenge/ARC-Challenge-Dev.jsonl"]),
        ("boolq", ["--data", "boolq/dev.jsonl"]),
    ],
)
def test_multiple_choice_benchmarks(checkpoint, tmp_path, task, files):
    files = [f if f.startswith("--") else str(FIX / f) for f in files]
    res = multiple_choice.main(common(checkpoint, tmp_path, "--task", task, *files))
    rows = predictions(res)
    assert len(rows) == res["n"] > 0
    acc = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert res["results"][0]["acc"]["mean"] == pytest.approx(acc)
    # the prediction is the option with the highest summed log-probability
    for r in rows:
        assert r["prediction"] == max(range(len(r["logprobs"])), key=lambda i: r["logprobs"][i])


def test_multiple_choice_in_context_through_the_encoder(checkpoint, tmp_path):
    data = str(FIX / "copa" / "val.jsonl")
    base = common(
        checkpoint, tmp_path, "--task", "copa", "--data", data, "--demos", data, "--shots", "2", "--trials", "2"
    )
    causal = multiple_choice.main(base)
    encoder = multiple_choice.main(base + ["--icl_mode", "encoder", "--out", str(tmp_path / "enc.json")])
    lp = lambda res: [r["logprobs"] for r in predictions(res)]  # noqa: E731
    assert lp(causal) != lp(encoder)  # the demonstrations really went through the text encoder


def test_vqa_scores_agree_with_the_official_metric(checkpoint, tmp_path):
    d = FIX / "vqav2"
    args = [
        "--questions",
        str(d / "v2_OpenEnded_mscoco_val2014_questions.json"),
        "--annotations",
        str(d / "v2_mscoco_val2014_annotations.json"),
        "--images",
        str(d),
        "--max_new_tokens",
        "3",
    ]
    res = vqa.main(common(checkpoint, tmp_path, *args))
    rows = predictions(res)
    ann = json.loads((d / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in ann}
    want = vqa_score({r["id"]: r["prediction"] for r in rows}, {r["id"]: answers[r["id"]] for r in rows})["overall"]
    assert res["results"][0]["vqa_accuracy"]["mean"] == pytest.approx(want)
    assert res["decoding"]["max_new_tokens"] == 3 and "Question:" in res["template"]


def test_vqa_test_split_writes_a_submission_file(checkpoint, tmp_path):
    d = FIX / "vqav2"
    questions = str(d / "v2_OpenEnded_mscoco_test-dev2015_questions.json")
    res = vqa.main(common(checkpoint, tmp_path, "--questions", questions, "--images", str(d), "--max_new_tokens", "2"))
    sub = json.loads(Path(res["predictions"]).with_suffix(".submission.json").read_text())
    assert len(sub) == res["n"] > 0 and set(sub[0]) == {"question_id", "answer"}


def test_okvqa_with_in_context_demonstrations(checkpoint, tmp_path):
    d = FIX / "okvqa"
    q, a = str(d / "OpenEnded_mscoco_val2014_questions.json"), str(d / "mscoco_val2014_annotations.json")
    res = vqa.main(
        common(
            checkpoint,
            tmp_path,
            "--benchmark",
            "okvqa",
            "--questions",
            q,
            "--annotations",
            a,
            "--images",
            str(d),
            "--demo_questions",
            q,
            "--demo_annotations",
            a,
            "--shots",
            "0,1",
            "--trials",
            "2",
            "--max_new_tokens",
            "2",
        )
    )
    assert res["benchmark"] == "okvqa" and len(res["results"][1]["vqa_accuracy"]["trials"]) == 2


@pytest.mark.parametrize(
    "fmt, caps, images, extra",
    [
        ("coco", "coco/captions_val2014.json", "coco/val2014", []),
        ("karpathy", "coco/dataset_coco.json", "coco", ["--split", "test"]),
        ("karpathy", "flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", ["--split", "test"]),
        ("flickr30k-tokens", "flickr30k/results_20130124.token", "flickr30k/flickr30k-images", []),
        ("coco", "nocaps/nocaps_val_4500_captions.json", "nocaps/validation", []),
    ],
)
def test_captioning_formats(checkpoint, tmp_path, fmt, caps, images, extra):
    res = caption.main(
        common(
            checkpoint,
            tmp_path,
            "--format",
            fmt,
            "--captions",
            str(FIX / caps),
            "--images",
            str(FIX / images),
            "--max_new_tokens",
            "6",
            *extra,
        )
    )
    rows = predictions(res)
    assert len(rows) == res["n"] > 0
    refs = {}
    if fmt == "coco":
        data = json.loads((FIX / caps).read_text())
        for a in data["annotations"]:
            refs.setdefault(a["image_id"], []).append(a["caption"])
        preds = {r["id"]: r["prediction"] for r in rows}
        assert res["results"][0]["cider_d"]["mean"] == pytest.approx(cider_d(preds, {k: refs[k] for k in preds}))
    assert {"bleu_4", "cider_d"} <= set(res["results"][0])


def test_bad_input_is_named_or_counted(checkpoint, tmp_path):
    bad = tmp_path / "bad.tsv"
    good = (FIX / "rte" / "dev.tsv").read_text().splitlines()
    bad.write_text("\n".join(good + ["9\tA premise.\tA hypothesis.\tmaybe"]) + "\n")
    with pytest.raises(ValueError, match="maybe"):
        glue.main(common(checkpoint, tmp_path, "--task", "rte", "--data", str(bad)))
    res = glue.main(common(checkpoint, tmp_path, "--task", "rte", "--data", str(bad), "--on_error", "skip"))
    assert res["n"] == 3 and sum(res["skipped"].values()) == 1
    d = FIX / "vqav2"
    with pytest.raises(FileNotFoundError, match="COCO_val2014"):
        vqa.main(
            common(
                checkpoint,
                tmp_path,
                "--questions",
                str(d / "v2_OpenEnded_mscoco_val2014_questions.json"),
                "--annotations",
                str(d / "v2_mscoco_val2014_annotations.json"),
                "--images",
                str(tmp_path),
            )
        )
    with pytest.raises(ValueError, match="demonstration"):
        glue.main(common(checkpoint, tmp_path, "--task", "rte", "--data", str(FIX / "rte" / "dev.tsv"), "--shots", "1"))


def test_scripts_run_from_the_command_line(checkpoint, tmp_path):
    for script in ("glue", "multiple_choice", "vqa", "caption", "snli_ve", "nlvr2"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "eval" / f"{script}.py"), "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert out.returncode == 0 and "--checkpoint" in out.stdout and "--shots" in out.stdout, out.stderr
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "glue.py"),
            *common(checkpoint, tmp_path, "--task", "sst2", "--data", str(FIX / "sst2" / "dev.tsv")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "glue-sst2: 4 examples" in out.stdout and json.loads((tmp_path / "r.json").read_text())["n"] == 4


def test_encode_input_sends_the_query_through_the_text_encoder(checkpoint, tmp_path):
    base = common(checkpoint, tmp_path, "--task", "rte", "--data", str(FIX / "rte" / "dev.tsv"))
    plain = glue.main(base)
    encoded = glue.main(base + ["--encode_input", "--out", str(tmp_path / "enc.json")])
    assert encoded["encode_input"] and not plain["encode_input"]
    assert [r["logprobs"] for r in predictions(plain)] != [r["logprobs"] for r in predictions(encoded)]


def test_world_runs_every_task_and_scores_unseen_pairs(checkpoint, tmp_path):
    w = tmp_path / "world"
    generate_world(w, seed=3, n_train=12, n_val=6, n_test=2, n_heldout=4, n_docs=10)
    out = tmp_path / "world.json"
    summary = world.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--world",
            str(w),
            "--split",
            "heldout",
            "--out",
            str(out),
            "--limit",
            "4",
            "--shots",
            "0,1",
            "--trials",
            "1",
            "--max_new_tokens",
            "3",
            "--caption_tokens",
            "4",
        ]
    )
    assert set(summary["tasks"]) == {"captions", "vqa", "entail", "choice"}
    captions = summary["tasks"]["captions"]["results"]
    assert [r["shots"] for r in captions] == [0, 1] and "unseen_pair_named" in captions[0]
    assert json.loads(out.read_text())["split"] == "heldout"
    for task in summary["tasks"].values():
        assert Path(task["file"]).is_file()


def test_the_hyphenated_flag_spelling_still_works(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--task", "rte", "--data", str(FIX / "rte" / "dev.tsv")]
    new = glue.main(base + ["--out", str(tmp_path / "new.json"), "--batch_size", "4", "--encode_input"])
    old = glue.main(base + ["--out", str(tmp_path / "old.json"), "--batch-size", "4", "--encode-input"])
    assert "--encode-input is deprecated; use --encode_input" in capsys.readouterr().err
    assert old["encode_input"] and old["results"] == new["results"]


@pytest.mark.parametrize(
    "flag, value", [("--limit", "-1"), ("--trials", "0"), ("--batch_size", "0"), ("--max_new_tokens", "0")]
)
def test_counts_that_would_run_oddly_are_refused_naming_the_flag(checkpoint, tmp_path, flag, value):
    args = ["--questions", str(tmp_path / "not_read_yet.json"), "--images", str(tmp_path), flag, value]
    with pytest.raises(ValueError, match=rf"\({flag}\) is {value}; expected an integer"):
        vqa.main(common(checkpoint, tmp_path, *args))
    assert not (tmp_path / "r.json").exists()


def test_skip_covers_unreadable_images_and_inputs_too_long_for_the_window(checkpoint, tmp_path):
    d = Path(shutil.copytree(FIX / "vqav2", tmp_path / "vqav2"))
    (d / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"not a jpeg")
    q, a = str(d / "v2_OpenEnded_mscoco_val2014_questions.json"), str(d / "v2_mscoco_val2014_annotations.json")
    args = ["--questions", q, "--annotations", a, "--images", str(d), "--max_new_tokens", "2"]
    with pytest.raises(ValueError, match="COCO_val2014_000000000042.jpg: not a readable image"):
        vqa.main(common(checkpoint, tmp_path, *args))
    demos = ["--demo_questions", q, "--demo_annotations", a, "--shots", "0,1", "--trials", "1"]
    res = vqa.main(common(checkpoint, tmp_path, *args, *demos, "--on_error", "skip"))
    assert res["n"] == 3 and len(predictions(res)) == 3 * 2
    assert res["skipped"] == {"unreadable_image": 2, "unreadable_demo_image": 2}
    assert "example 42000: " in res["data"]["skip_messages"][0]

    rows = (FIX / "rte" / "dev.tsv").read_text().splitlines()
    long = tmp_path / "long.tsv"
    long.write_text("\n".join([*rows, "7\t" + "A very long premise. " * 400 + "\tShort.\tentailment"]) + "\n")
    with pytest.raises(ValueError, match="tokens long; the decoder takes at most 1024"):
        glue.main(common(checkpoint, tmp_path, "--task", "rte", "--data", str(long)))
    res = glue.main(common(checkpoint, tmp_path, "--task", "rte", "--data", str(long), "--on_error", "skip"))
    assert res["n"] == len(rows) - 1 and res["skipped"] == {"too_long": 1} and res["data"]["examples"] == len(rows)
    assert "example 7: " in res["data"]["skip_messages"][0]

    copa = [json.loads(line) for line in (FIX / "copa" / "val.jsonl").read_text().splitlines()]
    copa[0]["premise"] = "The man waited. " * 400
    long = tmp_path / "val.jsonl"
    long.write_text("".join(json.dumps(r) + "\n" for r in copa))
    res = multiple_choice.main(
        common(checkpoint, tmp_path, "--task", "copa", "--data", str(long), "--on_error", "skip")
    )
    assert res["n"] == len(copa) - 1 and res["skipped"] == {"too_long": 1}
