"""Classification benchmarks: GLUE tsv files, SNLI-VE and NLVR2 jsonl in, ``ClassificationExample`` out, with
every task's label set (``LABELS``) and GLUE tsv layout (``GLUE_FORMATS``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.shards import existing
from data.tasks.examples import ClassificationExample, OnError, StrPath, TaskData, TaskDataError
from data.tasks.parsing import (
    Collector,
    ImageFiles,
    bad_label,
    get_field,
    int_if_digits,
    not_utf8,
    read_jsonl_records,
)

NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")

LABELS: dict[str, tuple[str, ...]] = {
    "sst2": BINARY,
    "cola": BINARY,
    "mrpc": BINARY,
    "qqp": BINARY,
    "wnli": BINARY,
    "mnli": NLI3,
    "mnli-mm": NLI3,
    "rte": NLI2,
    "qnli": NLI2,
    "snli-ve": NLI3,
    "nlvr2": ("False", "True"),
    "world-entail": NLI2,
}
"""The label set of every classification task (labels are kept as the strings the files hold)."""


@dataclass(frozen=True)
class _Tsv:
    """A GLUE tsv layout: our text field -> header column, the label column, id columns by preference, and the
    column names of a headerless variant (CoLA's train/dev files have no header row)."""

    texts: dict[str, str]
    label: str
    ids: tuple[str, ...] = ("index", "idx", "id")
    headerless: tuple[str, ...] | None = None


_NLI = {"premise": "sentence1", "hypothesis": "sentence2"}
GLUE_FORMATS: dict[str, _Tsv] = {
    "sst2": _Tsv({"sentence": "sentence"}, "label"),
    "cola": _Tsv({"sentence": "sentence"}, "label", headerless=("source", "label", "original_label", "sentence")),
    "mnli": _Tsv(_NLI, "gold_label"),
    "mnli-mm": _Tsv(_NLI, "gold_label"),
    "rte": _Tsv(_NLI, "label"),
    "wnli": _Tsv(_NLI, "label"),
    "qnli": _Tsv({"question": "question", "sentence": "sentence"}, "label"),
    "mrpc": _Tsv({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality"),
    "qqp": _Tsv({"question1": "question1", "question2": "question2"}, "is_duplicate"),
    "world-entail": _Tsv(_NLI, "label"),
}
"""GLUE tsv layouts by task, read by header name."""


def read_glue(
    tsv: StrPath, task: str, *, labeled: bool = True, on_error: OnError = "error"
) -> TaskData[ClassificationExample]:
    """A GLUE task's tsv (Wang et al. 2019, as ``download_glue_data.py`` ships it): tab-separated, unquoted cells,
    a header row (but CoLA's train/dev: ``source, label, original_label, sentence`` without one).

    Columns read by name: SST-2 ``sentence, label``; CoLA ``sentence, label``; MNLI (dev_matched / dev_mismatched)
    ``sentence1, sentence2, gold_label``; RTE, WNLI ``sentence1, sentence2, label``; QNLI ``question, sentence,
    label``; MRPC ``#1 String, #2 String, Quality``; QQP ``question1, question2, is_duplicate``. ``texts`` uses the
    names in ``TASKS[task].text_fields`` (NLI pairs as ``premise``/``hypothesis``), stripped. The id is the row's
    ``index``/``idx``/``id`` cell, else its 0-based row number. ``labeled=False`` reads a test file (no label
    column; labels None). ``task="world-entail"`` reads the bundled world's RTE-style file."""
    if task not in GLUE_FORMATS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_FORMATS)}")
    fmt, allowed = GLUE_FORMATS[task], LABELS[task]
    path = existing(tsv, f"{task} tsv")
    out: Collector[ClassificationExample] = Collector(path, on_error, f"a {task} tsv with one example a row")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise not_utf8(path, f"a {task} tsv", e) from None
    except csv.Error as e:
        raise TaskDataError(f"{path}: not a readable tsv ({e})", "malformed_row") from None
    if not any(c.strip() for row in rows for c in row):
        raise TaskDataError(f"{path}: empty; expected a {task} tsv with one example a row", "empty")
    first = rows[0]
    if fmt.headerless is not None and not set(fmt.texts.values()) <= set(first):
        header, body, start = list(fmt.headerless), rows, 1
    else:
        header, body, start = first, rows[1:], 2
        if not any(c.strip() for row in body for c in row):
            raise TaskDataError(f"{path}: only a header row {header}; expected {task} examples below it", "empty")
    needed = [*fmt.texts.values(), *([fmt.label] if labeled else [])]
    for col in needed:
        if col not in header:
            hint = " (pass labeled=False for an unlabeled test file)" if col == fmt.label else ""
            raise TaskDataError(
                f"{path}: missing column {col!r} for {task}{hint}; the header has {header}", "missing_field"
            )
    id_col = next((c for c in fmt.ids if c in header), None)

    def one(i: int, row: list[str]) -> ClassificationExample | None:
        line = start + i
        if not any(c.strip() for c in row):
            return None
        if len(row) != len(header):
            raise TaskDataError(
                f"{path}:{line}: {len(row)} cells, expected {len(header)} tab-separated cells ({header})",
                "malformed_row",
            )
        cells = dict(zip(header, row, strict=True))
        example_id = int_if_digits(cells[id_col]) if id_col else i
        label = None
        if labeled:
            label = cells[fmt.label].strip()
            if label not in allowed:
                raise bad_label(f"{path}:{line} (id {example_id})", label, allowed, task)
        texts = {name: cells[col].strip() for name, col in fmt.texts.items()}
        meta = {"source": cells["source"]} if "source" in cells else {}
        return ClassificationExample(example_id, texts, label, [], meta)

    for i, row in enumerate(body):
        out.add(one, i, row)
    return out.done()


def read_snli_ve(
    jsonl: StrPath, images_dir: StrPath, *, labeled: bool = True, on_error: OnError = "error"
) -> TaskData[ClassificationExample]:
    """SNLI-VE (Xie et al. 2019), ``snli_ve_{train,dev,test}.jsonl``: SNLI records whose premise is a Flickr30k image.

    Fields read: ``Flickr30K_ID``, ``sentence2`` (the hypothesis, as ``texts["hypothesis"]``), ``gold_label``
    (entailment / neutral / contradiction), ``pairID`` (the id; else the line's record index). The image is
    ``images_dir/<Flickr30K_ID>.jpg``. The premise caption ``sentence1`` is kept in ``meta`` only: the task is to
    judge the hypothesis from the image."""
    allowed = LABELS["snli-ve"]
    root = Path(images_dir)
    files: ImageFiles | None = None

    def build(path: Path, n: int, index: int, rec: dict) -> ClassificationExample:
        nonlocal files
        files = files or ImageFiles(path)
        where = f"{path}:{n}"
        example_id = rec.get("pairID", index)
        flickr_id = str(get_field(rec, "Flickr30K_ID", where, (str, int)))
        hypothesis = get_field(rec, "sentence2", where)
        label = None
        if labeled:
            label = get_field(rec, "gold_label", where)
            if label not in allowed:
                raise bad_label(f"{where} (pairID {example_id})", label, allowed, "snli-ve")
        image = files.find([root / f"{flickr_id}.jpg"], f"pairID {example_id} (Flickr30K_ID {flickr_id})")
        meta = {"sentence1": rec["sentence1"]} if isinstance(rec.get("sentence1"), str) else {}
        return ClassificationExample(example_id, {"hypothesis": hypothesis.strip()}, label, [image], meta)

    return read_jsonl_records(jsonl, "SNLI-VE jsonl", build, on_error)


class _Nlvr2Images:
    """NLVR2 image lookup: ``<dir>/<name>``, ``<dir>/<directory>/<name>``, ``<dir>/<split>/[<directory>/]<name>``,
    then any numbered subdirectory of ``<dir>`` or ``<dir>/<split>`` (the train images are spread over 0..99)."""

    def __init__(self, source: Path, root: Path):
        self.root, self.files = root, ImageFiles(source)
        self.numbered: dict[Path, dict[str, Path]] = {}

    def _index(self, base: Path) -> dict[str, Path]:
        if base not in self.numbered:
            index: dict[str, Path] = {}
            if base.is_dir():
                for sub in sorted(
                    (d for d in base.iterdir() if d.name.isdigit() and d.is_dir()), key=lambda d: int(d.name)
                ):
                    for f in sub.iterdir():
                        index.setdefault(f.name, f)
            self.numbered[base] = index
        return self.numbered[base]

    def find(self, name: str, split: str, directory: Any, example: str) -> Path:
        bases = [self.root, self.root / split]
        subdirs = [str(directory)] if directory is not None else []
        candidates = [b / s / name for b in bases for s in subdirs] + [b / name for b in bases]
        for path in candidates:
            if self.files.exists(path):
                return path
        for base in bases:
            if name in self._index(base):
                return self._index(base)[name]
        return self.files.find(candidates, example)


def read_nlvr2(
    jsonl: StrPath, images_dir: StrPath, *, labeled: bool = True, on_error: OnError = "error"
) -> TaskData[ClassificationExample]:
    """NLVR2 (Suhr et al. 2019), ``{train,dev,test1}.json`` (one JSON object a line despite the name).

    Fields read: ``identifier`` (``split-set-pair-sentence``, e.g. ``dev-850-0-0``), ``sentence``, ``label``
    (``"True"``/``"False"``), ``directory`` (train only: the numbered folder of its images). The left and right
    images are ``split-set-pair-img0.png`` and ``...-img1.png``; they are looked up in ``images_dir``, in its
    ``<split>/`` folder, under ``directory``, and else in any numbered subdirectory. ``images`` is [left, right]."""
    allowed = LABELS["nlvr2"]
    finder: _Nlvr2Images | None = None

    def build(path: Path, n: int, index: int, rec: dict) -> ClassificationExample:
        nonlocal finder
        finder = finder or _Nlvr2Images(path, Path(images_dir))
        where = f"{path}:{n}"
        identifier = get_field(rec, "identifier", where)
        where = f"{path}:{n} (identifier {identifier})"
        parts = identifier.split("-")
        if len(parts) < 4:
            raise TaskDataError(f"{where}: identifier {identifier!r} is not 'split-set-pair-sentence'", "bad_field")
        sentence = get_field(rec, "sentence", where)
        label = None
        if labeled:
            label = get_field(rec, "label", where)
            if label not in allowed:
                raise bad_label(where, label, allowed, "nlvr2")
        stem = "-".join(parts[:-1])
        images = [
            finder.find(f"{stem}-img{k}.png", parts[0], rec.get("directory"), f"identifier {identifier}")
            for k in (0, 1)
        ]
        return ClassificationExample(identifier, {"sentence": sentence.strip()}, label, images)

    return read_jsonl_records(jsonl, "NLVR2 jsonl", build, on_error)
