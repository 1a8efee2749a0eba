"""Shard writers from real formats and the streaming reader: exact round trips, splits, determinism, bad data."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

import data.reader as reader
import data.shards as shards
from data.reader import ReaderStats, expand_urls, iter_samples
from data.shards import write_cc3m, write_coco_captions, write_glue, write_jsonl, write_text, write_vqa

ROOT = Path(__file__).resolve().parents[1]


def image_file(path: Path, seed: int, fmt: str = "PNG") -> np.ndarray:
    """A random RGB image saved at ``path``; returns the pixels a reader should give back."""
    pixels = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return np.asarray(Image.open(path).convert("RGB"))


def read(urls, **kw) -> list[dict]:
    return list(iter_samples(urls, **kw))


def pixels(sample: dict) -> np.ndarray:
    assert sample["image"].mode == "RGB"
    return np.asarray(sample["image"])


def members(shard: str) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def raw_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def as_json(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def test_coco_captions_round_trip(tmp_path):
    src = {i: image_file(tmp_path / "img" / f"{i}.png", i) for i in (1, 2, 3)}
    (tmp_path / "img" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = [{"id": i, "file_name": f"img/{i}.png"} for i in (1, 2, 3, 4, 5)]
    anns = [
        (1, 1, "A red circle."),
        (2, 2, "A blue square."),
        (3, 1, "Red, round."),
        (4, 4, "Lost."),
        (5, 5, "Broken."),
        (6, 99, "No such image."),
        (7, 3, "A green triangle."),
        (8, 2, "  "),
    ]
    annotations = [{"id": a, "image_id": i, "caption": c} for a, i, c in anns]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))

    report = write_coco_captions(captions, tmp_path, str(tmp_path / "out" / "coco-%06d.tar"), 2)
    assert report.samples == 4 and len(report.shards) == 2
    assert report.skip_counts() == {"missing_image": 1, "bad_image": 1, "unknown_image_id": 1, "empty_text": 1}
    missing = next(s for s in report.skipped if s["reason"] == "missing_image")
    assert missing["detail"].endswith(str(Path("img") / "4.png"))

    samples = read(str(tmp_path / "out"))
    expected = [("A red circle.", 1, 1), ("Red, round.", 1, 3), ("A blue square.", 2, 2), ("A green triangle.", 3, 7)]
    assert [(s["caption"], s["image_id"], s["caption_id"]) for s in samples] == expected
    for s in samples:
        assert s["kind"] == "caption" and s["source"] in report.shards
        np.testing.assert_array_equal(pixels(s), src[s["image_id"]])
    stored = [data for name, data in members(report.shards[0]).items() if name.endswith(".png")]
    assert stored[0] == (tmp_path / "img" / "1.png").read_bytes()  # the original bytes, not re-encoded


@pytest.mark.parametrize("form", ["tsv-header", "tsv-bare", "parquet"])
def test_cc3m_round_trip(tmp_path, form):
    src = {
        "a.png": image_file(tmp_path / "imgs" / "a.png", 1),
        "sub/b.jpg": image_file(tmp_path / "imgs" / "sub" / "b.jpg", 2, "JPEG"),
        "c.bmp": image_file(tmp_path / "imgs" / "c.bmp", 3, "BMP"),
    }
    rows = [
        ("a picture", "a.png"),
        ("a photo", "sub/b.jpg"),
        ("a bitmap", "c.bmp"),
        ("gone", "missing.png"),
        ("", "a.png"),
        ("remote", "https://example.com/x.jpg"),
    ]
    table_dir = tmp_path / "tables"
    table_dir.mkdir()
    if form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = table_dir / "cc3m.parquet"
        pq.write_table(pa.table({"caption": [c for c, _ in rows], "image": [i for _, i in rows]}), table)
    else:
        table = table_dir / "cc3m.tsv"
        head = "caption\turl\n" if form == "tsv-header" else ""
        table.write_text(head + "".join(f"{c}\t{i}\n" for c, i in rows) + "one column only\n")

    report = write_cc3m(table, str(tmp_path / "out" / "cc-%06d.tar"), image_root=tmp_path / "imgs")
    expected = {"missing_image": 1, "empty_text": 1, "remote_image": 1}
    if form != "parquet":
        expected["malformed_row"] = 1
    assert report.samples == 3 and report.skip_counts() == expected
    samples = read(report.shards)
    assert [(s["caption"], s["image_id"]) for s in samples] == [(c, i) for c, i in rows[:3]]
    for s in samples:
        np.testing.assert_array_equal(pixels(s), src[s["image_id"]])
    names = sorted(n.rsplit(".", 1)[1] for n in members(report.shards[0]))
    assert names == ["jpg", "json", "json", "json", "png", "png"]  # the BMP became a PNG


def test_vqa_round_trip(tmp_path):
    src = {i: image_file(tmp_path / "images" / f"{i}.png", i) for i in (1, 2)}
    questions = [
        {"image_id": 1, "question": "What color?", "question_id": 10},
        {"image_id": 1, "question": "How many?", "question_id": 11},
        {"image_id": 2, "question": "Unanswered?", "question_id": 20},
        {"image_id": 3, "question": "No image?", "question_id": 30},
    ]

    def ann(qid, mc, answers):
        return {
            "question_id": qid,
            "multiple_choice_answer": mc,
            "question_type": "what",
            "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)],
        }

    qfile, afile = tmp_path / "q.json", tmp_path / "a.json"
    qfile.write_text(json.dumps({"data_subtype": "val", "questions": questions}))
    afile.write_text(
        json.dumps(
            {
                "annotations": [
                    ann(10, "red", ["red", "red", "crimson"]),
                    ann(11, "two", ["two"]),
                    ann(30, "none", ["none"]),
                ]
            }
        )
    )
    mapping = tmp_path / "captions.json"
    mapping.write_text(json.dumps({"images": [{"id": i, "file_name": f"images/{i}.png"} for i in (1, 2)]}))

    for pattern in ("images/{image_id}.png", str(mapping)):
        report = write_vqa(qfile, afile, tmp_path, str(tmp_path / "out" / "vqa-%06d.tar"), image_pattern=pattern)
        assert report.samples == 2 and report.skip_counts() == {"no_annotation": 1, "missing_image": 1}
        assert next(s for s in report.skipped if s["reason"] == "no_annotation")["detail"].startswith("question_id 20")
        samples = read(report.shards)
        assert [(s["question_id"], s["question"], s["answers"], s["answer"]) for s in samples] == [
            (10, "What color?", ["red", "red", "crimson"], "red"),
            (11, "How many?", ["two"], "two"),
        ]
        assert all(s["kind"] == "vqa" and s["image_id"] == 1 and s["question_type"] == "what" for s in samples)
        for s in samples:
            np.testing.assert_array_equal(pixels(s), src[1])

    coco = tmp_path / "val" / "COCO_val_000000000001.jpg"  # the default pattern, from the file's data_subtype
    coco.parent.mkdir()
    coco.write_bytes((tmp_path / "images" / "1.png").read_bytes())
    report = write_vqa(qfile, afile, tmp_path, str(tmp_path / "coco" / "vqa-%06d.tar"))
    assert report.samples == 2


def test_glue_round_trip(tmp_path):
    tsv = tmp_path / "rte.tsv"
    tsv.write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        '0\tHe said "hi".\tHe spoke.\tentailment\n'
        "1\tA cat sat.\tA dog sat.\tnot_entailment\n"
        "2\tonly three\tcolumns\n"
        "3\tNo label here.\tStill none.\t\n"
        "4\tLast one.\tThe end.\tentailment\n"
    )
    report = write_glue(tsv, "sentence1", str(tmp_path / "out" / "rte-%06d.tar"), text_b_col="sentence2")
    assert report.samples == 3 and report.skip_counts() == {"malformed_row": 1, "missing_label": 1}
    assert {s["item"] for s in report.skipped} == {f"{tsv}:4", f"{tsv}:5"}
    samples = read(report.shards)
    assert [(s["kind"], s["idx"], s["text"], s["text_b"], s["label"]) for s in samples] == [
        ("classification", "0", 'He said "hi".', "He spoke.", "entailment"),
        ("classification", "1", "A cat sat.", "A dog sat.", "not_entailment"),
        ("classification", "4", "Last one.", "The end.", "entailment"),
    ]
    single = write_glue(tsv, "sentence1", str(tmp_path / "single" / "rte-%06d.tar"))
    assert read(single.shards)[0]["text_b"] is None
    with pytest.raises(ValueError, match=r"rte\.tsv.*'premise'"):
        write_glue(tsv, "premise", str(tmp_path / "bad" / "rte-%06d.tar"))


def test_jsonl_choice_and_instruction(tmp_path):
    good = [
        {"question": "Which is round?", "choices": ["circle", "square"], "label": 0},
        {"question": "Which has three sides?", "choices": ["circle", "triangle"], "label": 1},
    ]
    choice = tmp_path / "choice.jsonl"
    choice.write_text(
        json.dumps(good[0])
        + "\n"
        + '{"question": "broken\n'
        + "\n"
        + json.dumps({**good[0], "label": 7})
        + "\n"
        + json.dumps(good[1])
        + "\n"
    )
    report = write_jsonl(choice, "choice", str(tmp_path / "out" / "choice-%06d.tar"))
    assert report.samples == 2 and report.skip_counts() == {"bad_json": 1, "invalid_record": 1}
    assert {s["item"] for s in report.skipped} == {f"{choice}:2", f"{choice}:4"}
    samples = read(report.shards)
    assert [{k: s[k] for k in ("question", "choices", "label")} for s in samples] == good
    assert all(s["kind"] == "choice" and s["image"] is None for s in samples)

    src = image_file(tmp_path / "images" / "a.png", 4)
    rows = [
        {
            "task": "caption",
            "instruction": "Describe the image.",
            "input": "",
            "output": "A circle.",
            "image": "images/a.png",
        },
        {"instruction": "Say yes.", "input": "Is it?", "output": "yes", "image": None, "extra": [1, 2]},
        {"task": "vqa", "instruction": "Answer.", "output": "x", "image": "images/zzz.png"},
    ]
    instr = tmp_path / "instructions.jsonl"
    instr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_jsonl(instr, "instruction", str(tmp_path / "out" / "instr-%06d.tar"))
    assert report.samples == 2 and report.skip_counts() == {"missing_image": 1}
    first, second = read(report.shards)
    assert (first["task"], first["output"]) == ("caption", "A circle.")
    np.testing.assert_array_equal(pixels(first), src)
    assert second["image"] is None and second["task"] == "instructions" and second["extra"] == [1, 2]

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 1"):
        write_jsonl(bad, "choice", str(tmp_path / "none" / "x-%06d.tar"))
    assert not (tmp_path / "none").exists() or not os.listdir(tmp_path / "none")


def test_text_round_trip(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        json.dumps({"text": "First doc.\n\nSecond paragraph.", "url": "u1"})
        + "\n"
        + json.dumps({"text": " "})
        + "\n"
        + json.dumps({"text": "Third."})
        + "\n"
    )
    txt = tmp_path / "book.txt"
    txt.write_text("Chapter one.\n\nIt begins.\n---\nChapter two.\n---\n\n---\nThe end.\n")
    report = write_text([jsonl, str(txt)], str(tmp_path / "out" / "text-%06d.tar"), 3)
    assert report.samples == 5 and len(report.shards) == 2 and report.skip_counts() == {"empty_text": 2}
    samples = read(str(tmp_path / "out" / "text-{000000..000001}.tar"))
    assert [s["text"] for s in samples] == [
        "First doc.\n\nSecond paragraph.",
        "Third.",
        "Chapter one.\n\nIt begins.",
        "Chapter two.",
        "The end.",
    ]
    assert samples[0]["url"] == "u1" and all(s["kind"] == "text" and s["image"] is None for s in samples)


def test_bad_inputs_are_named(tmp_path):
    out = str(tmp_path / "out" / "x-%06d.tar")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        write_coco_captions(tmp_path / "nowhere.json", tmp_path, out)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(ValueError, match=r"broken\.json.*line 2"):
        write_coco_captions(broken, tmp_path, out)
    nokey = tmp_path / "nokey.json"
    nokey.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"nokey\.json.*'annotations'"):
        write_coco_captions(nokey, tmp_path, out)
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="shard number"):
        write_text(docs, str(tmp_path / "no-pattern.tar"))
    allmissing = tmp_path / "c.json"
    allmissing.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "gone.png"}], "annotations": [{"image_id": 1, "caption": "x"}]})
    )
    with pytest.raises(ValueError, match="no samples written"):
        write_coco_captions(allmissing, tmp_path, out)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_cli(tmp_path, capsys):
    tsv = tmp_path / "sst.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"review {i}\t{i % 2}\n" for i in range(5)) + "bad row\n")
    out = tmp_path / "shards" / "sst-%06d.tar"
    cmd = [
        sys.executable,
        "-m",
        "data.shards",
        "glue",
        str(tsv),
        "--text_col",
        "sentence",
        "--out",
        str(out),
        "--max-per-shard",
        "2",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wrote 5 samples to 3 shard(s)" in done.stdout and "malformed_row 1" in done.stdout
    report = json.loads((tmp_path / "shards" / "sst-report.json").read_text())
    assert report["samples"] == 5 and report["skip_counts"] == {"malformed_row": 1} and len(report["shards"]) == 3
    assert [s["label"] for s in read(str(tmp_path / "shards"))] == ["0", "1", "0", "1", "0"]

    with pytest.raises(SystemExit) as exit_info:
        shards.main(["vqa", "--help"])
    assert exit_info.value.code == 0 and "--image-pattern" in capsys.readouterr().out
    assert shards.main(["coco", str(tmp_path / "missing.json"), str(tmp_path), "--out", str(out)]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_atomic_shards(tmp_path, monkeypatch):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10)))
    write = shards.TarWriter.write
    calls = []

    def failing(self, sample):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return write(self, sample)

    monkeypatch.setattr(shards.TarWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        write_text(docs, str(tmp_path / "out" / "t-%06d.tar"), 2)
    assert os.listdir(tmp_path / "out") == []  # neither the two finished shards nor temporary files
    monkeypatch.setattr(shards.TarWriter, "write", write)
    report = write_text(docs, str(tmp_path / "out" / "t-%06d.tar"), 2)
    assert sorted(os.listdir(tmp_path / "out")) == [Path(s).name for s in report.shards]


@pytest.fixture
def text_shards(tmp_path) -> list[str]:
    """23 one-line documents in 6 shards of at most 4."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(23)))
    report = write_text(docs, str(tmp_path / "shards" / "doc-%06d.tar"), 4)
    assert len(report.shards) == 6
    return report.shards


@pytest.mark.parametrize(
    "url,remote",
    [
        ("pipe:curl -s https://host/a.tar", True),
        ("http://host/a.tar", True),
        ("https://host/a.tar", True),
        ("s3://bucket/a.tar", True),
        ("gs://bucket/a.tar", True),
        ("hf://datasets/x/a.tar", True),
        ("C:\\shards\\a.tar", False),
        ("c:/shards/a.tar", False),
        ("/data/a.tar", False),
        ("shards/a:b.tar", False),
        ("a.tar", False),
        ("./pipe:x.tar", False),
    ],
)
def test_is_remote(url, remote):
    """One rule for shard and image locations: a scheme of two or more characters then ':' (a drive letter is local)."""
    assert shards.is_remote(url) is remote
    if remote:
        assert expand_urls(url) == [url]  # passed to webdataset's gopen as it is, never looked up on disk


def test_expand_urls(text_shards, tmp_path):
    folder = str(tmp_path / "shards")
    assert expand_urls(folder) == text_shards
    assert expand_urls(folder + "/doc-*.tar") == text_shards
    assert expand_urls(folder + "/doc-{000000..000005}.tar") == text_shards
    assert expand_urls([folder + "/doc-00000{0..1}.tar", Path(text_shards[5])]) == text_shards[:2] + text_shards[5:]
    for spec in (folder + "/doc-{000005..000006}.tar", folder + "/nope-*.tar", str(tmp_path)):
        with pytest.raises(FileNotFoundError):
            expand_urls(spec)


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 1), (3, 2), (2, 4), (4, 2), (1, 7)])
@pytest.mark.parametrize("shuffle_buffer", [0, 5])
def test_split_covers_every_sample_once(text_shards, monkeypatch, world_size, workers, shuffle_buffer):
    everything = Counter(s["key"] for s in read(text_shards))
    assert len(everything) == 23
    seen = Counter()
    for rank in range(world_size):
        for worker in range(workers):
            monkeypatch.setattr(reader, "_worker", lambda w=worker: (w, workers))
            part = read(text_shards, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, seed=1)
            assert part, (rank, worker)
            seen.update(s["key"] for s in part)
    assert seen == everything


def test_fewer_shards_than_ranks(text_shards):
    with pytest.raises(ValueError, match="6 shard.*8 ranks"):
        iter_samples(text_shards, rank=0, world_size=8)
    everything, parts = {s["key"] for s in read(text_shards)}, []
    for rank in range(8):  # resample: every rank reads every shard and keeps its own samples, forever
        keys = [s["key"] for s in islice(iter_samples(text_shards, resample=True, rank=rank, world_size=8), 20)]
        period = keys.index(keys[0], 1)
        assert keys[period : 2 * period] == keys[:period]
        parts.append(keys[:period])
    assert sum(len(p) for p in parts) == 23 and set().union(*parts) == everything


def test_determinism(text_shards):
    def keys(**kw):
        return [s["key"] for s in read(text_shards, shuffle_buffer=6, **kw)]

    base = keys(seed=7)
    assert base == keys(seed=7) and base == keys(seed=7, epoch=0)
    for other in (keys(seed=8), keys(seed=7, epoch=1)):
        assert other != base and sorted(other) == sorted(base)
    assert [s["key"] for s in read(text_shards)] == sorted(base)  # no buffer: file order


def test_resample_cycles_through_epochs(text_shards):
    stream = iter_samples(text_shards, shuffle_buffer=6, seed=3, resample=True)
    keys = [s["key"] for s in islice(stream, 3 * 23)]
    passes = [keys[i * 23 : (i + 1) * 23] for i in range(3)]
    assert all(sorted(p) == sorted(passes[0]) and len(set(p)) == 23 for p in passes)
    assert passes[0] != passes[1] != passes[2]
    for epoch in (1, 2):
        assert passes[epoch] == [s["key"] for s in read(text_shards, shuffle_buffer=6, seed=3, epoch=epoch)]


def _identity(sample):
    return sample


class _Samples(IterableDataset):
    """``iter_samples`` consumed inside DataLoader workers: each worker reads its share from ``get_worker_info``."""

    def __init__(self, urls, epoch: int):
        self.urls, self.epoch = urls, epoch

    def __iter__(self):
        return iter_samples(self.urls, shuffle_buffer=4, seed=2, epoch=self.epoch)


def test_samples_split_over_dataloader_workers(text_shards):
    def keys(epoch: int) -> list[str]:
        loader = DataLoader(_Samples(text_shards, epoch), batch_size=None, num_workers=2, collate_fn=_identity)
        return [s["key"] for s in loader]

    first = keys(0)
    assert len(first) == 23 and len(set(first)) == 23 and first == keys(0)
    second = keys(1)
    assert second != first and sorted(second) == sorted(first)


def test_corrupt_data_is_skipped_and_counted(tmp_path, caplog):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(png, format="PNG")
    png = png.getvalue()
    raw_tar(
        tmp_path / "a-mixed.tar",
        [
            ("good1", {"json": as_json({"kind": "text", "text": "fine"})}),
            ("badjson", {"json": b'{"kind": "text", "te'}),
            ("brokenimg", {"json": as_json({"kind": "caption", "caption": "x"}), "png": png[:40]}),
            ("nojson", {"png": png}),
            ("unknown", {"json": as_json({"kind": "poem", "text": "roses"})}),
            ("empty", {"json": as_json({"kind": "text", "text": "  \n"})}),
            ("noimage", {"json": as_json({"kind": "caption", "caption": "where is it"})}),
            ("nofield", {"json": as_json({"kind": "vqa", "question": "q?", "answer": "a"})}),
            ("good2", {"json": as_json({"kind": "caption", "caption": "red"}), "png": png}),
        ],
    )
    whole = raw_tar(
        tmp_path / "b-cut.tar", [(f"t{i}", {"json": as_json({"kind": "text", "text": "y" * 2000})}) for i in range(4)]
    )
    data = whole.read_bytes()
    whole.write_bytes(data[: 2 * 2560 + 512 + 700])  # cut inside the third sample's data
    cut_at_boundary = tmp_path / "c-boundary.tar"  # ends after a json, before its sample's image: no end marker
    raw_tar(
        cut_at_boundary,
        [
            ("u0", {"json": as_json({"kind": "text", "text": "ok"})}),
            ("u1", {"json": as_json({"kind": "caption", "caption": "c"}), "png": png}),
        ],
    )
    cut_at_boundary.write_bytes(cut_at_boundary.read_bytes()[: 4 * 512])
    (tmp_path / "d-garbage.tar").write_bytes(b"this is not a tar file" * 40)
    raw_tar(tmp_path / "e-last.tar", [("good3", {"json": as_json({"kind": "text", "text": "after the damage"})})])
    raw_tar(tmp_path / "f-deleted.tar", [("never", {"json": as_json({"kind": "text", "text": "gone"})})])

    stats = ReaderStats()
    with caplog.at_level(logging.WARNING, logger="data.reader"):
        stream = iter_samples(str(tmp_path), stats=stats)
        (tmp_path / "f-deleted.tar").unlink()  # vanishes after listing: counted, not fatal
        samples = list(stream)
    assert [s["key"] for s in samples] == ["good1", "good2", "t0", "t1", "u0", "good3"]
    assert np.asarray(samples[1]["image"]).tolist() == [[[200, 10, 10]] * 4] * 4
    assert stats.samples == 6
    bad_samples = ("bad_json", "bad_image", "no_json", "unknown_kind", "empty_text", "missing_image", "missing_field")
    assert stats.skipped == {**dict.fromkeys(bad_samples, 1), "damaged_tar": 3, "unreadable_shard": 1}
    assert any("a-mixed.tar key badjson" in e for e in stats.examples)
    assert any("b-cut.tar" in e and "t2" in e for e in stats.examples)
    assert 1 <= len(caplog.records) <= 5
