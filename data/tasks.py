"""Benchmark readers: evaluation files in their published formats in, a few uniform example types out.

Each reader takes the files as the benchmark's authors publish them (VQAv2 / OK-VQA json, COCO captions json,
Karpathy splits, GLUE tsv, SNLI-VE and NLVR2 jsonl, HellaSwag, PIQA, COPA, StoryCloze, Winogrande, ARC and BoolQ
files) and returns a :class:`TaskData`: a list of examples of one of four types plus a :class:`ReadReport`.

- :class:`VQAExample` (open-ended visual question answering, all human answers kept raw),
- :class:`CaptionExample` (an image and its reference captions),
- :class:`ChoiceExample` (options as ``(context, continuation)`` pairs, scored by the likelihood of the
  continuation given the context; templates follow lm-evaluation-harness, whose conventions descend from the GPT-3
  paper: the continuation starts with the space that separates it from the context),
- :class:`ClassificationExample` (named text fields, optional images, a string label from the task's label set in
  :data:`LABELS`).

Bad input. Problems with a whole file (missing file, not JSON, a missing top-level key or tsv/csv column) always
raise. Problems with one example (a missing image, a VQA question without annotation, a malformed jsonl line, a
missing or mistyped field, a label outside the task's label set) raise by default, with the file, line or id, the
field and what was expected; with ``on_error="skip"`` the example is left out and counted by reason in the report
(``report.to_dict()`` is meant for a results json). :class:`TaskDataError` (a ``ValueError``) and
:class:`MissingImageError` (a ``FileNotFoundError``) carry the ``reason`` a skip is counted under.

The bundled world (``data/world.py``) writes VQAv2, COCO captions, an RTE-style tsv and a multiple-choice jsonl,
so the same readers serve it; :func:`world_files` names its files and ``read_world_*(world_dir, split)`` read one
split. :data:`TASKS` maps benchmark names to their reader, kind and label set.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from data.shards import existing, jsonl_lines

StrPath = str | os.PathLike
OnError = Literal["error", "skip"]
ExampleId = int | str

_log = logging.getLogger(__name__)
_MESSAGES = 20


# --------------------------------------------------------------------------------------------------------------------
# Example types, reports, errors


@dataclass
class VQAExample:
    """One open-ended question about an image: the human answers (10 in VQAv2 and OK-VQA) unnormalized, in file
    order; empty for a split published without annotations. ``meta`` holds ``image_id`` and, when annotated,
    ``multiple_choice_answer``."""

    question_id: ExampleId
    image: Path
    question: str
    answers: list[str]
    answer_type: str | None
    question_type: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptionExample:
    """One image and its reference captions (stripped), in file order."""

    image_id: ExampleId
    image: Path
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChoiceExample:
    """A multiple-choice item: option ``i`` is scored as log p(``options[i][1]`` | ``options[i][0]``); ``label`` is
    the index of the right option (None when the split is unlabeled)."""

    id: ExampleId
    options: list[tuple[str, str]]
    label: int | None
    images: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassificationExample:
    """Named text fields (see ``TaskSpec.text_fields`` for their order) and a label from the task's label set."""

    id: ExampleId
    texts: dict[str, str]
    label: str | None
    images: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


E = TypeVar("E")


@dataclass
class ReadReport:
    """What a reader did: examples returned, examples skipped by reason, and the first few skip messages."""

    source: str
    examples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.messages) < _MESSAGES:
            self.messages.append(message)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "examples": self.examples, "skipped": dict(sorted(self.skipped.items())),
                "skip_messages": list(self.messages)}  # fmt: skip


@dataclass
class TaskData(Generic[E]):
    """A reader's result: the examples (a list, also reachable by indexing and iterating this) and the report."""

    examples: list[E]
    report: ReadReport

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[E]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> E:
        return self.examples[i]


class TaskDataError(ValueError):
    """Malformed benchmark data; ``reason`` is the short code the problem is counted under when skipping."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class MissingImageError(FileNotFoundError):
    """An example's image file is not where the benchmark's convention puts it (reason ``missing_image``)."""

    reason = "missing_image"


_SKIPPABLE = (TaskDataError, MissingImageError)


class _Collector(Generic[E]):
    """Builds examples one at a time; an example's error is raised (``on_error="error"``) or counted and skipped."""

    def __init__(self, source: StrPath, on_error: OnError):
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.report = ReadReport(str(source))
        self.examples: list[E] = []

    def add(self, build: Callable[..., E | None], *args: Any) -> None:
        try:
            example = build(*args)
        except _SKIPPABLE as e:
            if self.on_error == "error":
                raise
            self.report.skip(e.reason, str(e))
            return
        if example is not None:
            self.examples.append(example)

    def done(self) -> TaskData[E]:
        self.report.examples = len(self.examples)
        if self.report.skipped:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(self.report.skipped.items()))
            _log.warning("%s: skipped %d example(s) (%s); first: %s", self.report.source, self.report.n_skipped,
                         counts, self.report.messages[0])  # fmt: skip
        return TaskData(self.examples, self.report)


# --------------------------------------------------------------------------------------------------------------------
# Shared parsing helpers


def _read_json(path: StrPath, what: str) -> Any:
    path = existing(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); expected {what}",
                            "bad_json") from None  # fmt: skip
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 ({e}); expected {what}", "bad_json") from None


def _top(obj: Any, key: str, path: Path, what: str, optional: bool = False) -> list | None:
    """The list under top-level ``key`` of a json file (None if ``optional`` and absent)."""
    if not isinstance(obj, dict):
        raise TaskDataError(f"{path}: expected a JSON object with {key!r} ({what}), got {type(obj).__name__}")
    if key not in obj:
        if optional:
            return None
        raise TaskDataError(f"{path}: missing top-level field {key!r}; expected {what}", "missing_field")
    if not isinstance(obj[key], list):
        raise TaskDataError(f"{path}: top-level field {key!r} must be a list, got {type(obj[key]).__name__}")
    return obj[key]


_EXPECTED = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def _get(obj: Mapping, key: str, where: str, kind: type | tuple[type, ...] = str, expected: str | None = None) -> Any:
    """``obj[key]`` checked to be of ``kind`` (bool is not an int here); errors name ``where`` and the field."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    expected = expected or " or ".join(_EXPECTED.get(k, k.__name__) for k in kinds)
    if not isinstance(obj, Mapping):
        raise TaskDataError(f"{where}: expected an object with field {key!r}, got {type(obj).__name__}", "bad_field")
    if key not in obj:
        raise TaskDataError(f"{where}: missing field {key!r} (expected {expected})", "missing_field")
    value = obj[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TaskDataError(f"{where}: field {key!r} is {value!r}; expected {expected}", "bad_field")
    return value


def _strings(obj: Mapping, key: str, where: str, min_len: int = 1) -> list[str]:
    value = _get(obj, key, where, list, f"a list of at least {min_len} strings")
    if len(value) < min_len or not all(isinstance(v, str) for v in value):
        raise TaskDataError(f"{where}: field {key!r} is {value!r}; expected a list of at least {min_len} strings",
                            "bad_field")  # fmt: skip
    return value


def _bad_label(where: str, label: Any, allowed: Sequence[Any], task: str) -> TaskDataError:
    return TaskDataError(f"{where}: label {label!r} is not in the {task} label set {list(allowed)}", "bad_label")


def _jsonl(path: Path) -> Iterator[tuple[int, int, dict | TaskDataError]]:
    """(line number, record index among non-blank lines, object or the error for a malformed line)."""
    for index, (n, obj) in enumerate(jsonl_lines(path)):
        if isinstance(obj, ValueError):
            obj = TaskDataError(f"{path}:{n}: malformed line ({obj}); expected one JSON object per line", "bad_json")
        yield n, index, obj


def _record(obj: dict | TaskDataError) -> dict:
    if isinstance(obj, TaskDataError):
        raise obj
    return obj


def _read_jsonl(
    path: StrPath, what: str, build: Callable[[Path, int, int, dict], E | None], on_error: OnError
) -> TaskData[E]:
    """``build(path, line, index, record)`` for every record of a jsonl file."""
    path = existing(path, what)
    out: _Collector[E] = _Collector(path, on_error)

    def one(n: int, index: int, obj: dict | TaskDataError) -> E | None:
        return build(path, n, index, _record(obj))

    for n, index, obj in _jsonl(path):
        out.add(one, n, index, obj)
    return out.done()


class _ImageFiles:
    """Finds an example's image among candidate paths, remembering which files exist (images repeat)."""

    def __init__(self, source: Path):
        self.source = source
        self.seen: dict[Path, bool] = {}

    def exists(self, path: Path) -> bool:
        if path not in self.seen:
            self.seen[path] = path.is_file()
        return self.seen[path]

    def find(self, candidates: Sequence[Path], example: str) -> Path:
        for path in candidates:
            if self.exists(path):
                return path
        tried = " or ".join(str(p) for p in dict.fromkeys(candidates))
        raise MissingImageError(f"{self.source}: {example}: image file not found: {tried}")


def _int_if_digits(text: str) -> ExampleId:
    return int(text) if text.isdigit() else text


# --------------------------------------------------------------------------------------------------------------------
# VQA


def _coco_folder_and_name(subtype: str, image_id: ExampleId) -> tuple[str, str]:
    """COCO's image folder and file name for a VQA ``data_subtype``: ``val2014/COCO_val2014_000000000042.jpg``;
    test-dev2015 questions use test2015 images; 2017 images are named by the zero-padded id alone."""
    folder = "test2015" if subtype == "test-dev2015" else subtype
    if folder.endswith("2017"):
        return folder, f"{int(image_id):012d}.jpg"
    return folder, f"COCO_{folder}_{int(image_id):012d}.jpg"


def read_vqa(
    questions_json: StrPath,
    annotations_json: StrPath | None,
    images_dir: StrPath,
    image_name: str | Mapping[Any, str] | None = None,
    *,
    on_error: OnError = "error",
) -> TaskData[VQAExample]:
    """VQAv2 or OK-VQA: a questions json and (unless the split is unannotated) an annotations json.

    Format (VQAv2, Goyal et al. 2017; OK-VQA, Marino et al. 2019, uses the same one): the questions file is
    ``{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}], ...}``, the annotations
    file ``{"annotations": [{"question_id", "image_id", "answers": [{"answer", "answer_confidence", "answer_id"}],
    "answer_type", "question_type", "multiple_choice_answer"}], ...}``. OK-VQA answers also carry ``raw_answer``;
    the ``answer`` field is the one read. With ``annotations_json=None`` (test-dev / test) answers are empty.

    Image of a question, relative to ``images_dir``: the question's ``file_name`` if it has one; else
    ``image_name[image_id]`` when ``image_name`` is a mapping (the bundled world: see :func:`coco_image_files`);
    else ``image_name.format(image_id=..., subtype=...)`` when it is a template; else COCO's naming from
    ``data_subtype`` (``COCO_val2014_{image_id:012d}.jpg``; ``{image_id:012d}.jpg`` for 2017). Template and COCO
    names are looked up in ``images_dir`` and in its ``<subtype>`` folder (e.g. ``val2014/``)."""
    qpath = existing(questions_json, "VQA questions json")
    qdata = _read_json(qpath, "a VQA questions json")
    questions = _top(qdata, "questions", qpath, "a list of {image_id, question, question_id}")
    subtype = qdata.get("data_subtype")
    root = Path(images_dir)
    if isinstance(image_name, str):
        try:
            image_name.format(image_id=0, subtype="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"image_name {image_name!r} may only use {{image_id}} and {{subtype}}: {e!r}") from None
    files = {str(k): v for k, v in image_name.items()} if isinstance(image_name, Mapping) else None
    if image_name is None and not isinstance(subtype, str) and not all("file_name" in q for q in questions):
        raise TaskDataError(f"{qpath}: missing top-level field 'data_subtype' (e.g. 'val2014') needed to name COCO "
                            "images; pass image_name, a template with {image_id} or a mapping image_id -> file",
                            "missing_field")  # fmt: skip

    by_qid: dict[Any, dict] | None = None
    apath = None
    if annotations_json is not None:
        apath = existing(annotations_json, "VQA annotations json")
        annotations = _top(_read_json(apath, "a VQA annotations json"), "annotations", apath,
                           "a list of {question_id, image_id, answers, answer_type, question_type}")  # fmt: skip
        by_qid = {}
        for i, ann in enumerate(annotations):
            by_qid[_get(ann, "question_id", f"{apath}: annotations[{i}]", (int, str))] = ann
    images = _ImageFiles(qpath)
    out: _Collector[VQAExample] = _Collector(qpath, on_error)

    def image_of(q: dict, image_id: ExampleId, example: str) -> Path:
        if isinstance(q.get("file_name"), str):
            return images.find([root / q["file_name"]], example)
        if files is not None:
            if str(image_id) not in files:
                raise MissingImageError(f"{qpath}: {example}: image_id {image_id} is not in the image mapping")
            return images.find([root / files[str(image_id)]], example)
        if isinstance(image_name, str):
            name, folder = image_name.format(image_id=image_id, subtype=subtype), subtype
        else:
            folder, name = _coco_folder_and_name(subtype, image_id)
        return images.find([root / name, *([root / folder / name] if isinstance(folder, str) else [])], example)

    def one(i: int, q: Any) -> VQAExample:
        where = f"{qpath}: questions[{i}]"
        qid = _get(q, "question_id", where, (int, str))
        where = f"{qpath}: question_id {qid}"
        image_id = _get(q, "image_id", where, (int, str))
        question = _get(q, "question", where)
        answers, answer_type, question_type, meta = [], None, None, {"image_id": image_id}
        if by_qid is not None:
            ann = by_qid.get(qid)
            if ann is None:
                raise TaskDataError(f"{qpath}: question_id {qid} has no annotation in {apath}", "no_annotation")
            awhere = f"{apath}: question_id {qid}"
            if ann.get("image_id", image_id) != image_id:
                raise TaskDataError(f"{awhere}: image_id {ann['image_id']} differs from the question's {image_id}",
                                    "image_id_mismatch")  # fmt: skip
            raw = _get(ann, "answers", awhere, list, "a list of {answer, answer_confidence, answer_id}")
            if not raw:
                raise TaskDataError(f"{awhere}: field 'answers' is empty; expected the human answers", "bad_field")
            answers = [_get(a, "answer", f"{awhere}: answers[{j}]") for j, a in enumerate(raw)]
            answer_type = ann.get("answer_type")
            question_type = ann.get("question_type")
            if "multiple_choice_answer" in ann:
                meta["multiple_choice_answer"] = ann["multiple_choice_answer"]
        image = image_of(q, image_id, f"question_id {qid} (image_id {image_id})")
        return VQAExample(qid, image, question, answers, answer_type, question_type, meta)

    for i, q in enumerate(questions):
        out.add(one, i, q)
    return out.done()


def coco_image_files(captions_json: StrPath) -> dict[int | str, str]:
    """image id -> ``file_name`` from a COCO-format json's ``images`` (to pass as ``read_vqa(image_name=...)``)."""
    path = existing(captions_json, "COCO json")
    images = _top(_read_json(path, "a COCO json"), "images", path, "a list of {id, file_name}")
    return {_get(im, "id", f"{path}: images[{i}]", (int, str)): _get(im, "file_name", f"{path}: images[{i}]")
            for i, im in enumerate(images)}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Captions


_CAPTION_META = ("domain", "open_images_id")


def read_coco_captions(
    captions_json: StrPath, images_dir: StrPath, *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """COCO captions (``captions_val2014.json``; NoCaps ``nocaps_val_4500_captions.json`` has the same format).

    Format: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "id", "caption"}]}``; file names
    are relative to ``images_dir``. One example per image, in ``images`` order, with its captions in file order.
    A file without ``annotations`` (NoCaps / COCO test image-info files) gives empty references. When there are
    annotations, an image without any is left out and counted as ``no_references`` (whatever ``on_error`` says).
    NoCaps' ``domain`` and ``open_images_id`` go to ``meta``."""
    path = existing(captions_json, "COCO captions json")
    data = _read_json(path, "a COCO captions json")
    images = _top(data, "images", path, "a list of {id, file_name}")
    annotations = _top(data, "annotations", path, "a list of {image_id, caption}", optional=True)
    root = Path(images_dir)
    files = _ImageFiles(path)
    out: _Collector[CaptionExample] = _Collector(path, on_error)
    refs: dict[Any, list[str]] = {}
    for i, im in enumerate(images):
        refs.setdefault(_get(im, "id", f"{path}: images[{i}]", (int, str)), [])

    def caption(i: int, ann: Any) -> None:
        where = f"{path}: annotations[{i}]"
        image_id = _get(ann, "image_id", where, (int, str))
        text = _get(ann, "caption", where)
        if image_id not in refs:
            raise TaskDataError(f"{where}: image_id {image_id!r} is not among the file's images", "unknown_image")
        refs[image_id].append(text.strip())

    for i, ann in enumerate(annotations or []):
        out.add(caption, i, ann)

    def one(i: int, im: dict) -> CaptionExample | None:
        image_id = im["id"]
        file_name = _get(im, "file_name", f"{path}: images[{i}] (id {image_id})")
        if annotations is not None and not refs[image_id]:
            out.report.skip("no_references", f"{path}: image id {image_id} has no caption")
            return None
        image = files.find([root / file_name], f"image id {image_id}")
        meta = {k: im[k] for k in _CAPTION_META if k in im}
        return CaptionExample(image_id, image, refs[image_id], meta)

    for i, im in enumerate(images):
        out.add(one, i, im)
    return out.done()


def read_karpathy(
    dataset_json: StrPath, images_dir: StrPath, split: str | Sequence[str] = "test", *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """Karpathy & Fei-Fei's caption splits (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_8k.json``).

    Format: ``{"dataset": "coco", "images": [{"filepath"?: "val2014", "filename", "split", "imgid", "cocoid"?,
    "sentences": [{"raw", "tokens", ...}]}]}``. ``split`` is one of train/val/test/restval or a list of them
    (COCO's usual training set is ``["train", "restval"]``). The image is ``images_dir/filepath/filename`` (or
    ``images_dir/filename``); its id is ``cocoid`` when there is one, else the file name's stem (the Flickr id)."""
    path = existing(dataset_json, "Karpathy split json")
    images = _top(_read_json(path, "a Karpathy split json"), "images", path, "a list of {filename, split, sentences}")
    wanted = {split} if isinstance(split, str) else set(split)
    root = Path(images_dir)
    files = _ImageFiles(path)
    out: _Collector[CaptionExample] = _Collector(path, on_error)

    def one(i: int, im: Any) -> CaptionExample | None:
        where = f"{path}: images[{i}]"
        if _get(im, "split", where) not in wanted:
            return None
        filename = _get(im, "filename", where)
        where = f"{path}: images[{i}] ({filename})"
        image_id = im["cocoid"] if "cocoid" in im else _int_if_digits(Path(filename).stem)
        sentences = _get(im, "sentences", where, list, "a list of {raw, tokens}")
        refs = [_get(s, "raw", f"{where}: sentences[{j}]").strip() for j, s in enumerate(sentences)]
        candidates = [root / im["filepath"] / filename] if isinstance(im.get("filepath"), str) else []
        image = files.find([*candidates, root / filename], f"image {image_id}")
        return CaptionExample(image_id, image, refs, {"split": im["split"]})

    for i, im in enumerate(images):
        out.add(one, i, im)
    return out.done()


_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")


def read_flickr30k_tokens(
    results_token_file: StrPath, images_dir: StrPath, *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """The original Flickr30k captions file ``results_20130124.token`` (Young et al. 2014), one caption a line:
    ``1000092795.jpg#0<TAB>Two young guys ...``. Examples in order of first appearance, id = the file's stem."""
    path = existing(results_token_file, "Flickr30k token file")
    root = Path(images_dir)
    files = _ImageFiles(path)
    out: _Collector[CaptionExample] = _Collector(path, on_error)
    refs: dict[str, list[str]] = {}

    def line(n: int, text: str) -> None:
        m = _TOKEN_LINE.match(text)
        if m is None:
            raise TaskDataError(f"{path}:{n}: malformed line {text[:60]!r}; expected '<image>.jpg#<n><TAB><caption>'",
                                "malformed_line")  # fmt: skip
        refs.setdefault(m["file"], []).append(m["caption"].strip())

    with path.open(encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if text.strip():
                out.add(line, n, text.rstrip("\r\n"))

    def one(name: str) -> CaptionExample:
        image_id = _int_if_digits(Path(name).stem)
        return CaptionExample(image_id, files.find([root / name], f"image {name}"), refs[name])

    for name in refs:
        out.add(one, name)
    return out.done()


# --------------------------------------------------------------------------------------------------------------------
# Classification: GLUE tsv, SNLI-VE, NLVR2


NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")

LABELS: dict[str, tuple[str, ...]] = {
    "sst2": BINARY, "cola": BINARY, "mrpc": BINARY, "qqp": BINARY, "wnli": BINARY,
    "mnli": NLI3, "mnli-mm": NLI3, "rte": NLI2, "qnli": NLI2, "snli-ve": NLI3, "nlvr2": ("False", "True"),
    "world-entail": NLI2,
}  # fmt: skip
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
    out: _Collector[ClassificationExample] = _Collector(path, on_error)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (csv.Error, UnicodeDecodeError) as e:
        raise TaskDataError(f"{path}: not a readable UTF-8 tsv ({e})", "malformed_row") from None
    first = rows[0] if rows else []
    if fmt.headerless is not None and not set(fmt.texts.values()) <= set(first):
        header, body, start = list(fmt.headerless), rows, 1
    else:
        header, body, start = first, rows[1:], 2
    needed = [*fmt.texts.values(), *([fmt.label] if labeled else [])]
    for col in needed:
        if col not in header:
            hint = " (pass labeled=False for an unlabeled test file)" if col == fmt.label else ""
            raise TaskDataError(f"{path}: missing column {col!r} for {task}{hint}; the header has {header}",
                                "missing_field")  # fmt: skip
    id_col = next((c for c in fmt.ids if c in header), None)

    def one(i: int, row: list[str]) -> ClassificationExample | None:
        line = start + i
        if not any(c.strip() for c in row):
            return None
        if len(row) != len(header):
            raise TaskDataError(f"{path}:{line}: {len(row)} cells, expected {len(header)} tab-separated cells "
                                f"({header})", "malformed_row")  # fmt: skip
        cells = dict(zip(header, row, strict=True))
        example_id = _int_if_digits(cells[id_col]) if id_col else i
        label = None
        if labeled:
            label = cells[fmt.label].strip()
            if label not in allowed:
                raise _bad_label(f"{path}:{line} (id {example_id})", label, allowed, task)
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
    files: _ImageFiles | None = None

    def build(path: Path, n: int, index: int, rec: dict) -> ClassificationExample:
        nonlocal files
        files = files or _ImageFiles(path)
        where = f"{path}:{n}"
        example_id = rec.get("pairID", index)
        flickr_id = str(_get(rec, "Flickr30K_ID", where, (str, int)))
        hypothesis = _get(rec, "sentence2", where)
        label = None
        if labeled:
            label = _get(rec, "gold_label", where)
            if label not in allowed:
                raise _bad_label(f"{where} (pairID {example_id})", label, allowed, "snli-ve")
        image = files.find([root / f"{flickr_id}.jpg"], f"pairID {example_id} (Flickr30K_ID {flickr_id})")
        meta = {"sentence1": rec["sentence1"]} if isinstance(rec.get("sentence1"), str) else {}
        return ClassificationExample(example_id, {"hypothesis": hypothesis.strip()}, label, [image], meta)

    return _read_jsonl(jsonl, "SNLI-VE jsonl", build, on_error)


class _Nlvr2Images:
    """NLVR2 image lookup: ``<dir>/<name>``, ``<dir>/<directory>/<name>``, ``<dir>/<split>/[<directory>/]<name>``,
    then any numbered subdirectory of ``<dir>`` or ``<dir>/<split>`` (the train images are spread over 0..99)."""

    def __init__(self, source: Path, root: Path):
        self.root, self.files = root, _ImageFiles(source)
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
        identifier = _get(rec, "identifier", where)
        where = f"{path}:{n} (identifier {identifier})"
        parts = identifier.split("-")
        if len(parts) < 4:
            raise TaskDataError(f"{where}: identifier {identifier!r} is not 'split-set-pair-sentence'", "bad_field")
        sentence = _get(rec, "sentence", where)
        label = None
        if labeled:
            label = _get(rec, "label", where)
            if label not in allowed:
                raise _bad_label(where, label, allowed, "nlvr2")
        stem = "-".join(parts[:-1])
        images = [finder.find(f"{stem}-img{k}.png", parts[0], rec.get("directory"), f"identifier {identifier}")
                  for k in (0, 1)]  # fmt: skip
        return ClassificationExample(identifier, {"sentence": sentence.strip()}, label, images)

    return _read_jsonl(jsonl, "NLVR2 jsonl", build, on_error)


# --------------------------------------------------------------------------------------------------------------------
# Multiple choice


def _label_index(value: Any, n: int, where: str, task: str, offset: int = 0) -> int:
    """An option index from an int or digit string label (``offset`` 1 for 1-based labels)."""
    allowed = list(range(offset, n + offset))
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise _bad_label(where, value, allowed, task)
    if int(value) not in allowed:
        raise _bad_label(where, value, allowed, task)
    return int(value) - offset


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness' HellaSwag clean-up: strip, ``" [title]"`` -> ``". "``, drop other ``[...]`` WikiHow
    artifacts (``[header]``, ``[step]``, ...), collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """HellaSwag (Zellers et al. 2019), ``hellaswag_{train,val,test}.jsonl``.

    Fields read: ``ind`` (id; else the record index), ``activity_label``, ``ctx_a`` and ``ctx_b`` (or ``ctx``),
    ``endings`` (4), ``label``. Template (lm-evaluation-harness): context = ``preprocess(activity_label + ": " +
    ctx_a + " " + ctx_b.capitalize())`` (``str.capitalize`` as there, which also lower-cases the rest), each
    option's continuation = ``" " + preprocess(ending)``; see :func:`hellaswag_preprocess`."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("ind", index)
        where = f"{path}:{n} (ind {example_id})"
        if "ctx_a" in rec:
            ctx = _get(rec, "ctx_a", where) + " " + _get(rec, "ctx_b", where).capitalize()
        else:
            ctx = _get(rec, "ctx", where, str, "a string (or ctx_a and ctx_b)")
        activity = rec.get("activity_label")
        context = hellaswag_preprocess(f"{activity}: {ctx}" if isinstance(activity, str) else ctx)
        endings = _strings(rec, "endings", where, 2)
        label = (
            _label_index(_get(rec, "label", where, (int, str)), len(endings), where, "hellaswag") if labeled else None
        )
        meta = {k: rec[k] for k in ("split_type", "source_id") if k in rec}
        return ChoiceExample(example_id, [(context, " " + hellaswag_preprocess(e)) for e in endings], label, [], meta)

    return _read_jsonl(jsonl, "HellaSwag jsonl", build, on_error)


def read_piqa(
    jsonl: StrPath, labels_lst: StrPath | None = None, *, on_error: OnError = "error"
) -> TaskData[ChoiceExample]:
    """PIQA (Bisk et al. 2020), ``train.jsonl`` / ``valid.jsonl`` with ``goal, sol1, sol2`` and the labels (0 or 1,
    one a line, in record order) in a separate ``train-labels.lst`` / ``valid-labels.lst``; ``labels_lst=None``
    (the test split) gives label None. Template (lm-evaluation-harness): context ``"Question: {goal}\\nAnswer:"``,
    continuations ``" " + sol1`` and ``" " + sol2``. The id is the record's ``id`` if any, else its index."""
    path = existing(jsonl, "PIQA jsonl")
    labels: list[str] | None = None
    if labels_lst is not None:
        lpath = existing(labels_lst, "PIQA labels file")
        labels = [line.strip() for line in lpath.read_text(encoding="utf-8").splitlines() if line.strip()]
        n_records = sum(1 for _ in _jsonl(path))
        if len(labels) != n_records:
            raise TaskDataError(f"{lpath}: {len(labels)} labels for {n_records} records in {path}; expected one label "
                                "a line per record", "label_count")  # fmt: skip

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("id", index)
        where = f"{path}:{n} (id {example_id})"
        goal, sol1, sol2 = (_get(rec, k, where) for k in ("goal", "sol1", "sol2"))
        label = None
        if labels is not None:
            label = _label_index(labels[index], 2, f"{labels_lst}:{index + 1} (for {where})", "piqa")
        context = f"Question: {goal}\nAnswer:"
        return ChoiceExample(example_id, [(context, " " + sol1), (context, " " + sol2)], label)

    return _read_jsonl(path, "PIQA jsonl", build, on_error)


COPA_CONNECTORS = {"cause": "because", "effect": "therefore"}
"""lm-evaluation-harness' COPA connectors (GPT-3-style: the premise, without its final period, runs on into the
lower-cased choice)."""


def read_copa(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """COPA as SuperGLUE ships it (Roemmele et al. 2011), ``{train,val,test}.jsonl``: ``premise, choice1, choice2,
    question`` (cause / effect), ``label`` (0 / 1), ``idx``. Template (lm-evaluation-harness): context = the premise
    without its final period + ``" because"`` (cause) or ``" therefore"`` (effect); continuation = ``" "`` + the
    choice with its first letter lower-cased."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("idx", index)
        where = f"{path}:{n} (idx {example_id})"
        premise, question = _get(rec, "premise", where).strip(), _get(rec, "question", where)
        if question not in COPA_CONNECTORS:
            raise TaskDataError(f"{where}: field 'question' is {question!r}; expected 'cause' or 'effect'", "bad_field")
        choices = [_get(rec, k, where) for k in ("choice1", "choice2")]
        label = _label_index(_get(rec, "label", where, (int, str)), 2, where, "copa") if labeled else None
        context = f"{premise.removesuffix('.')} {COPA_CONNECTORS[question]}"
        return ChoiceExample(example_id, [(context, " " + c[:1].lower() + c[1:]) for c in choices], label)

    return _read_jsonl(jsonl, "COPA jsonl", build, on_error)


_STORY_COLUMNS = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                  "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")  # fmt: skip


def read_storycloze(csv_file: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """Story Cloze Test (Mostafazadeh et al. 2016; the 2016 and 2018 val/test csv files): columns ``InputStoryid,
    InputSentence1..4, RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2, AnswerRightEnding`` (1 or 2). Template
    (lm-evaluation-harness): context = the four sentences joined by spaces, continuations ``" " + quiz ending``."""
    path = existing(csv_file, "StoryCloze csv")
    out: _Collector[ChoiceExample] = _Collector(path, on_error)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in [*_STORY_COLUMNS, *(["AnswerRightEnding"] if labeled else [])]:
            if col not in header:
                raise TaskDataError(f"{path}: missing column {col!r}; the header has {header}", "missing_field")

        def one(n: int, row: dict[str, str | None]) -> ChoiceExample:
            example_id = row["InputStoryid"]
            where = f"{path}:{n} (InputStoryid {example_id})"
            if None in row or any(row[c] is None for c in header):
                raise TaskDataError(f"{where}: expected {len(header)} comma-separated cells", "malformed_row")
            context = " ".join(row[f"InputSentence{k}"].strip() for k in range(1, 5))
            endings = [row["RandomFifthSentenceQuiz1"].strip(), row["RandomFifthSentenceQuiz2"].strip()]
            label = _label_index(row["AnswerRightEnding"].strip(), 2, where, "storycloze", 1) if labeled else None
            return ChoiceExample(example_id, [(context, " " + e) for e in endings], label)

        try:
            for row in reader:
                out.add(one, reader.line_num, row)
        except csv.Error as e:
            raise TaskDataError(f"{path}:{reader.line_num}: {e}", "malformed_row") from None
    return out.done()


def read_winogrande(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """WinoGrande (Sakaguchi et al. 2020), ``{train_xl,dev,test}.jsonl``: ``qID, sentence`` (with one ``_`` blank),
    ``option1, option2, answer`` ("1" / "2"). Partial scoring as in lm-evaluation-harness and the GPT-3 paper: option
    ``k``'s context is the sentence up to the blank with option ``k`` filled in, and the continuation (the same for
    both) is ``" "`` + the rest of the sentence after the blank, stripped."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("qID", index)
        where = f"{path}:{n} (qID {example_id})"
        sentence = _get(rec, "sentence", where)
        if "_" not in sentence:
            raise TaskDataError(f"{where}: field 'sentence' has no '_' blank: {sentence!r}", "bad_field")
        options = [_get(rec, k, where) for k in ("option1", "option2")]
        blank = sentence.index("_")
        rest = " " + sentence[blank + 1 :].strip()
        label = _label_index(_get(rec, "answer", where, (str, int)), 2, where, "winogrande", 1) if labeled else None
        return ChoiceExample(example_id, [(sentence[:blank] + o, rest) for o in options], label)

    return _read_jsonl(jsonl, "WinoGrande jsonl", build, on_error)


def read_arc(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """ARC-Easy / ARC-Challenge (Clark et al. 2018), ``ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl``: ``id``,
    ``question: {stem, choices: [{text, label}]}``, ``answerKey``. Choice labels are A-E on most items, 1-5 on a
    few; the label is the position of ``answerKey`` among them. Template (lm-evaluation-harness): context
    ``"Question: {stem}\\nAnswer:"``, continuations ``" " + choice text``."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("id", index)
        where = f"{path}:{n} (id {example_id})"
        question = _get(rec, "question", where, dict, "an object {stem, choices}")
        stem = _get(question, "stem", f"{where}: question")
        choices = _get(question, "choices", f"{where}: question", list, "a list of {text, label}")
        texts = [_get(c, "text", f"{where}: question.choices[{j}]") for j, c in enumerate(choices)]
        keys = [str(_get(c, "label", f"{where}: question.choices[{j}]", (str, int))) for j, c in enumerate(choices)]
        if len(texts) < 2:
            raise TaskDataError(f"{where}: field 'question.choices' has {len(texts)} choice(s); expected at least 2",
                                "bad_field")  # fmt: skip
        label = None
        if labeled:
            key = str(_get(rec, "answerKey", where, (str, int))).strip()
            if key not in keys:
                raise _bad_label(where, key, keys, "arc")
            label = keys.index(key)
        context = f"Question: {stem}\nAnswer:"
        return ChoiceExample(example_id, [(context, " " + t) for t in texts], label)

    return _read_jsonl(jsonl, "ARC jsonl", build, on_error)


def read_boolq(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """BoolQ (Clark et al. 2019), both published forms: the original ``{train,dev}.jsonl`` (``question, title,
    answer: bool, passage``) and SuperGLUE's ``{train,val}.jsonl`` (``question, passage, idx, label: bool``).
    Template (lm-evaluation-harness): context ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, options
    ``" no"`` (0) and ``" yes"`` (1)."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("idx", index)
        where = f"{path}:{n} (idx {example_id})"
        passage, question = _get(rec, "passage", where), _get(rec, "question", where)
        label = None
        if labeled:
            key = "answer" if "answer" in rec else "label"
            value = _get(rec, key, where, (bool, int), "true or false (field 'answer', or SuperGLUE's 'label')")
            if value not in (0, 1):
                raise _bad_label(where, value, [False, True], "boolq")
            label = int(value)
        context = f"{passage.strip()}\nQuestion: {question.strip()}?\nAnswer:"
        meta = {"title": rec["title"]} if "title" in rec else {}
        return ChoiceExample(example_id, [(context, " no"), (context, " yes")], label, [], meta)

    return _read_jsonl(jsonl, "BoolQ jsonl", build, on_error)


def read_choice_jsonl(jsonl: StrPath, *, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """A generic multiple-choice jsonl, ``{"question", "choices": [str], "label": int}`` one a line: the bundled
    world's ``text/choice_{split}.jsonl`` and ``data.shards``' ``choice`` kind. Template, as ARC's: context
    ``"Question: {question}\\nAnswer:"``, continuations ``" " + choice``. The id is the record index."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        where = f"{path}:{n}"
        question, choices = _get(rec, "question", where), _strings(rec, "choices", where, 2)
        label = _label_index(_get(rec, "label", where, int), len(choices), where, "choice")
        context = f"Question: {question}\nAnswer:"
        return ChoiceExample(index, [(context, " " + c) for c in choices], label)

    return _read_jsonl(jsonl, "choice jsonl", build, on_error)


@dataclass
class InstructionExample:
    """One instruction-following example: what to do, an optional input text and image, and the expected output.
    ``task`` names its task cluster (for held-out-cluster zero-shot tests); ``""`` when the file has none.
    ``options`` lists the allowed answers of a closed-set task (FLAN's OPTIONS), the output among them; empty for
    open-ended tasks."""

    id: ExampleId
    task: str
    instruction: str
    input: str
    output: str
    image: Path | None = None
    options: tuple[str, ...] = ()


def read_instructions(
    jsonl: StrPath, image_root: StrPath | None = None, *, on_error: OnError = "error"
) -> TaskData[InstructionExample]:
    """FLAN-style instruction data, one JSON object a line::

        {"instruction": "Count the shapes.", "input": "", "output": "three", "image": "images/a.png", "task": "count",
         "options": ["one", "two", "three"]}

    ``instruction`` and ``output`` are required strings; ``input`` (default ``""``), ``image`` (a path relative to
    ``image_root``, default the file's folder; ``null`` or absent for text-only), ``task`` (the task cluster,
    default ``""``) and ``options`` (the answers a closed-set task allows, at least two distinct strings, one of
    them the output; absent, ``null`` or ``[]`` for open-ended tasks) are optional; ``id`` defaults to the record
    index. The bundled world's ``instructions_{split}.jsonl`` is in this format."""
    root = Path(image_root) if image_root is not None else Path(jsonl).parent
    images = _ImageFiles(Path(jsonl))

    def build(path: Path, n: int, index: int, rec: dict) -> InstructionExample:
        where = f"{path}:{n}"
        instruction, output = _get(rec, "instruction", where), _get(rec, "output", where)
        if not instruction.strip():
            raise TaskDataError(f"{where}: field 'instruction' is empty; expected the task in words", "bad_field")
        text = _get(rec, "input", where) if "input" in rec else ""
        task = _get(rec, "task", where) if "task" in rec else ""
        image = None
        if rec.get("image") is not None:
            image = images.find([root / _get(rec, "image", where)], f"line {n}")
        options: tuple[str, ...] = ()
        if rec.get("options"):
            options = tuple(o.strip() for o in _strings(rec, "options", where, 2))
            if len(set(options)) < len(options) or not all(options):
                raise TaskDataError(f"{where}: field 'options' is {rec['options']!r}; expected distinct non-empty "
                                    "answers", "bad_field")  # fmt: skip
            if output.strip() not in options:
                raise TaskDataError(f"{where}: output {output!r} is not one of the options {list(options)}",
                                    "bad_label")  # fmt: skip
        return InstructionExample(rec.get("id", index), task, instruction, text, output, image, options)

    return _read_jsonl(jsonl, "instruction jsonl", build, on_error)


# --------------------------------------------------------------------------------------------------------------------
# The bundled world


_WORLD_FILES = {
    "captions": "captions_{split}.json", "vqa_questions": "vqa/{split}_questions.json",
    "vqa_annotations": "vqa/{split}_annotations.json", "entail": "text/entail_{split}.tsv",
    "choice": "text/choice_{split}.jsonl", "scenes": "scenes_{split}.jsonl",
    "instructions": "instructions_{split}.jsonl", "corpus": "text/corpus_{split}.jsonl",
}  # fmt: skip


def world_files(world_dir: StrPath, split: str) -> dict[str, Path]:
    """Paths of one split of a generated world (``python -m data.world --out DIR``): ``root`` (image file names in
    its jsons are relative to it), ``captions``, ``vqa_questions``, ``vqa_annotations``, ``entail``, ``choice``,
    ``scenes``, ``instructions``, ``corpus``; names come from its ``meta.json``."""
    root = Path(world_dir)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no world at {root} (no meta.json); generate one with python -m data.world --out DIR")
    splits = _read_json(meta_path, "the world's meta.json").get("splits", {})
    if split not in splits:
        raise ValueError(f"{meta_path}: no split {split!r}; the world has {sorted(splits)}")
    names = {k: splits[split].get(k, v.format(split=split)) for k, v in _WORLD_FILES.items()}
    return {"root": root, **{k: root / v for k, v in names.items()}}


def read_world_vqa(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[VQAExample]:
    """One split of the world's VQAv2-format files; images found through its COCO captions json's ``images``."""
    files = world_files(world_dir, split)
    return read_vqa(files["vqa_questions"], files["vqa_annotations"], files["root"],
                    coco_image_files(files["captions"]), on_error=on_error)  # fmt: skip


def read_world_captions(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[CaptionExample]:
    """One split of the world's COCO-format captions."""
    files = world_files(world_dir, split)
    return read_coco_captions(files["captions"], files["root"], on_error=on_error)


def read_world_entail(
    world_dir: StrPath, split: str, *, on_error: OnError = "error"
) -> TaskData[ClassificationExample]:
    """One split of the world's RTE-style ``text/entail_{split}.tsv`` (entailment / not_entailment)."""
    return read_glue(world_files(world_dir, split)["entail"], "world-entail", on_error=on_error)


def read_world_choice(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """One split of the world's ``text/choice_{split}.jsonl`` (see :func:`read_choice_jsonl`)."""
    return read_choice_jsonl(world_files(world_dir, split)["choice"], on_error=on_error)


# --------------------------------------------------------------------------------------------------------------------
# Registry


Kind = Literal["vqa", "caption", "choice", "classification"]


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark: its example kind, its reader (arguments as documented there), and for classification its label
    set, text fields in prompt order and the label words lm-evaluation-harness verbalizes labels with."""

    name: str
    kind: Kind
    reader: Callable[..., TaskData]
    labels: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()
    label_words: Mapping[str, str] = field(default_factory=dict)


def _glue(name: str, words: dict[str, str]) -> TaskSpec:
    reader = functools.partial(read_glue, task=name)
    return TaskSpec(name, "classification", reader, LABELS[name], tuple(GLUE_FORMATS[name].texts), words)


_NLI3_WORDS = {"entailment": "True", "neutral": "Neither", "contradiction": "False"}
_NLI2_WORDS = {"entailment": "True", "not_entailment": "False"}
_YES_NO = {"0": "no", "1": "yes"}

TASKS: dict[str, TaskSpec] = {
    "vqav2": TaskSpec("vqav2", "vqa", read_vqa),
    "okvqa": TaskSpec("okvqa", "vqa", read_vqa),
    "coco": TaskSpec("coco", "caption", read_coco_captions),
    "coco-karpathy": TaskSpec("coco-karpathy", "caption", read_karpathy),
    "flickr30k": TaskSpec("flickr30k", "caption", read_karpathy),
    "flickr30k-tokens": TaskSpec("flickr30k-tokens", "caption", read_flickr30k_tokens),
    "nocaps": TaskSpec("nocaps", "caption", read_coco_captions),
    "nlvr2": TaskSpec("nlvr2", "classification", read_nlvr2, LABELS["nlvr2"], ("sentence",),
                      {"False": "false", "True": "true"}),
    "snli-ve": TaskSpec("snli-ve", "classification", read_snli_ve, LABELS["snli-ve"], ("hypothesis",), _NLI3_WORDS),
    "sst2": _glue("sst2", {"0": "negative", "1": "positive"}),
    "cola": _glue("cola", _YES_NO),
    "mnli": _glue("mnli", _NLI3_WORDS),
    "mnli-mm": _glue("mnli-mm", _NLI3_WORDS),
    "rte": _glue("rte", _NLI2_WORDS),
    "qnli": _glue("qnli", {"entailment": "yes", "not_entailment": "no"}),
    "mrpc": _glue("mrpc", _YES_NO),
    "qqp": _glue("qqp", _YES_NO),
    "wnli": _glue("wnli", {"0": "False", "1": "True"}),
    "hellaswag": TaskSpec("hellaswag", "choice", read_hellaswag),
    "piqa": TaskSpec("piqa", "choice", read_piqa),
    "copa": TaskSpec("copa", "choice", read_copa),
    "storycloze": TaskSpec("storycloze", "choice", read_storycloze),
    "winogrande": TaskSpec("winogrande", "choice", read_winogrande),
    "arc-easy": TaskSpec("arc-easy", "choice", read_arc),
    "arc-challenge": TaskSpec("arc-challenge", "choice", read_arc),
    "boolq": TaskSpec("boolq", "choice", read_boolq),
    "world-vqa": TaskSpec("world-vqa", "vqa", read_world_vqa),
    "world-captions": TaskSpec("world-captions", "caption", read_world_captions),
    "world-entail": TaskSpec("world-entail", "classification", read_world_entail, LABELS["world-entail"],
                             ("premise", "hypothesis"), _NLI2_WORDS),
    "world-choice": TaskSpec("world-choice", "choice", read_world_choice),
}  # fmt: skip
"""Benchmarks by name. Every world reader takes ``(world_dir, split)``; the others take the files listed in their
docstrings (e.g. ``TASKS["sst2"].reader("SST-2/dev.tsv")``, ``TASKS["vqav2"].reader(questions, annotations,
images_dir)``)."""


def get_task(name: str) -> TaskSpec:
    """``TASKS[name]``, with an error that lists the known names."""
    if name not in TASKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
