"""Webdataset shards from real data formats, and the ``python -m data.shards`` command that writes them.

Every sample is one ``__key__`` with a ``json`` member (an object with ``"kind"``) and at most one image member
(``png`` or ``jpg``: the original file bytes; any other format is re-encoded losslessly to PNG). Kinds and fields:
``text`` (text), ``caption`` (caption, image_id; image), ``vqa`` (question, question_id, image_id, answers, answer;
image), ``classification`` (text, text_b, label), ``choice`` (question, choices, label: int) and ``instruction``
(task, instruction, input, output; optional image). Extra fields pass through.

Why this shape: a training job streams shards without any index, so each sample must carry everything it needs.
Inputs are checked while writing: images are decoded once with PIL, and an item that cannot become a correct sample
(missing or broken image, question without answers, malformed line) is skipped and listed in the ``ShardReport``,
never written half right. Shards are written under hidden temporary names and renamed only when the whole job has
succeeded, so a crash or an error leaves no shard, truncated or not, under a final name.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from webdataset import TarWriter

from metalm.io import JSONFileError, iter_jsonl, read_json

StrPath = str | os.PathLike

KINDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "caption": ("caption",),
    "vqa": ("question", "answers", "answer"),
    "classification": ("text", "label"),
    "choice": ("question", "choices", "label"),
    "instruction": ("instruction", "output"),
}
"""Each kind with the json fields a sample of it must have (the reader checks them too)."""
IMAGE_KINDS = frozenset({"caption", "vqa"})
"""Kinds whose samples always have an image."""
IMAGE_EXTS = ("png", "jpg", "jpeg")
"""Image member extensions, in order of preference."""

_log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    """What a writer did: samples written, the shards (final paths, in order) and every skipped item with why."""

    samples: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "shards": self.shards,
            "skip_counts": self.skip_counts(),
            "skipped": self.skipped,
        }

    def summary(self, max_skips: int = 10) -> str:
        """A few lines for a terminal: counts, shards, and the first skipped items."""
        lines = [f"wrote {self.samples} samples to {len(self.shards)} shard(s)"]
        shown = self.shards if len(self.shards) <= 4 else [*self.shards[:2], "...", self.shards[-1]]
        lines += [f"  {s}" for s in shown]
        if self.skipped:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(self.skip_counts().items()))
            lines.append(f"skipped {len(self.skipped)}: {counts}")
            lines += [f"  {s['reason']}: {s['item']}: {s['detail']}" for s in self.skipped[:max_skips]]
            if len(self.skipped) > max_skips:
                lines.append(f"  ... {len(self.skipped) - max_skips} more in the report")
        return "\n".join(lines)


@dataclass
class _Record:
    key: str
    item: str
    meta: dict
    image: Path | None = None


@dataclass
class _Skipped:
    item: str
    reason: str
    detail: str = ""


class _BadImage(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Images:
    """Reads image files and checks that PIL decodes them, remembering the last few (captions repeat images)."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self.cache: OrderedDict[Path, tuple[str, bytes]] = OrderedDict()

    def __call__(self, path: Path) -> tuple[str, bytes]:
        if path not in self.cache:
            self.cache[path] = self._load(path)
            if len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        return self.cache[path]

    @staticmethod
    def _load(path: Path) -> tuple[str, bytes]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _BadImage("missing_image", str(path)) from None
        except OSError as e:
            raise _BadImage("unreadable_image", f"{path}: {e}") from None
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.format == "PNG":
                    return "png", data
                if im.format == "JPEG":
                    return "jpg", data
                out = io.BytesIO()
                im.convert("RGBA" if "A" in im.getbands() else "RGB").save(out, format="PNG")
                return "png", out.getvalue()
        except Exception as e:  # PIL raises many types for bad data
            raise _BadImage("bad_image", f"{path}: {type(e).__name__}: {e}") from None


def _key(text: str) -> str:
    """A webdataset-safe key part: no dots or slashes (they would split the member name)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:64]


class _ShardSink:
    """Rolls samples into shards under hidden temporary names; renames them all only when the job succeeds."""

    def __init__(self, out_pattern: str, max_per_shard: int):
        try:
            distinct = out_pattern % 0 != out_pattern % 1
        except (TypeError, ValueError):
            distinct = False
        if not distinct:
            raise ValueError(f"out pattern {out_pattern!r} needs a shard number format such as name-%06d.tar")
        if max_per_shard < 1:
            raise ValueError(f"max samples per shard must be at least 1, got {max_per_shard}")
        self.pattern, self.max_per_shard = out_pattern, max_per_shard
        self.done: list[tuple[Path, Path]] = []
        self.file: io.BufferedWriter | None = None
        self.tar: TarWriter | None = None
        self.count = 0

    def write(self, key: str, meta: dict, image: tuple[str, bytes] | None) -> None:
        if self.tar is None or self.count >= self.max_per_shard:
            self._next()
        sample = {"__key__": key, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
        if image is not None:
            sample[image[0]] = image[1]
        self.tar.write(sample)
        self.count += 1

    def _next(self) -> None:
        self._close()
        final = Path(self.pattern % len(self.done))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        self.done.append((tmp, final))
        self.file = tmp.open("wb")
        self.tar = TarWriter(self.file, encoder=False, mtime=0)
        self.count = 0

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.tar = self.file = None

    def __enter__(self) -> _ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._close()
        except BaseException:
            self._discard()
            raise
        for tmp, final in self.done:
            os.replace(tmp, final)
        following = Path(self.pattern % len(self.done))
        if following.exists():
            _log.warning("%s is left from an earlier run and would be read with these shards", following)

    def _discard(self) -> None:
        if self.file is not None:
            self.file.close()
        self.tar = self.file = None
        for tmp, _ in self.done:
            tmp.unlink(missing_ok=True)

    @property
    def paths(self) -> list[str]:
        return [str(final) for _, final in self.done]


def _write(records: Iterable[_Record | _Skipped], out_pattern: str, max_per_shard: int, what: str) -> ShardReport:
    """Writes good records, reports the rest; raises (leaving no shard) if nothing could be written."""
    report, images = ShardReport(), _Images()
    with _ShardSink(out_pattern, max_per_shard) as sink:
        for rec in records:
            if isinstance(rec, _Skipped):
                report.skipped.append({"item": rec.item, "reason": rec.reason, "detail": rec.detail})
                continue
            try:
                image = images(rec.image) if rec.image is not None else None
            except _BadImage as e:
                report.skipped.append({"item": rec.item, "reason": e.reason, "detail": e.detail})
                continue
            sink.write(f"{report.samples:08d}-{_key(rec.key)}", rec.meta, image)
            report.samples += 1
        if report.samples == 0:
            raise ValueError(f"no samples written from {what}\n{report.summary()}")
    report.shards = sink.paths
    return report


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def is_remote(url: str) -> bool:
    """Whether a shard or image location is a URL for webdataset's ``gopen`` (``pipe:cmd``, ``http://``, ``s3://``,
    ``gs://`` ...) rather than a local path: it starts with a URL scheme (RFC 3986: a letter, then letters, digits,
    ``+ - .``) and a colon. The scheme must have at least two characters, so a Windows drive (``C:\\x``, ``C:/x``)
    stays local, where webdataset's ``urlparse`` would take ``c`` for a scheme it cannot open."""
    return _URL_SCHEME.match(url) is not None


def existing(path: StrPath, what: str, directory: bool = False) -> Path:
    """``path`` as a Path; a missing one, or a directory where a file is meant (a file where a ``directory`` is), is
    an error that says what it was meant to be."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise (NotADirectoryError if directory else IsADirectoryError)(f"{what} expected, but {path} is {kind}")
    return path


def _field(obj: object, name: str, path: Path, where: str):
    if not isinstance(obj, dict) or name not in obj:
        raise ValueError(f"{path}: {where} has no {name!r} field")
    return obj[name]


def _json_list(obj: object, name: str, path: Path) -> list:
    value = _field(obj, name, path, "the top-level object")
    if not isinstance(value, list):
        raise ValueError(f"{path}: {name!r} must be a list, got {type(value).__name__}")
    return value


def _jsonl(path: Path) -> Iterator[tuple[int, dict] | _Skipped]:
    """(line number, object) per good line, a skip per malformed one; raises if no line is good."""
    good, first_bad = 0, None
    for n, obj in iter_jsonl(path, "a JSONL file"):
        if isinstance(obj, JSONFileError):
            first_bad = first_bad or f"line {n}: {obj.detail}"
            yield _Skipped(f"{path}:{n}", "bad_json", obj.detail)
            continue
        good += 1
        yield n, obj
    if first_bad is not None and good == 0:
        raise ValueError(f"{path}: no valid JSON line; first error at {first_bad}")


def _text_records(path: Path) -> Iterator[_Record | _Skipped]:
    if path.suffix == ".jsonl":
        for rec in _jsonl(path):
            if isinstance(rec, _Skipped):
                yield rec
                continue
            n, obj = rec
            text, item = obj.get("text"), f"{path}:{n}"
            if not isinstance(text, str):
                yield _Skipped(item, "invalid_record", "no 'text' string")
            elif not text.strip():
                yield _Skipped(item, "empty_text", "")
            else:
                yield _Record(f"{path.stem}-{n}", item, {**obj, "kind": "text", "text": text.strip()})
        return
    try:
        content = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e})") from None
    for i, doc in enumerate(re.split(r"(?m)^---[ \t]*$", content)):
        if doc.strip():
            yield _Record(f"{path.stem}-{i}", f"{path}: document {i}", {"kind": "text", "text": doc.strip()})
        else:
            yield _Skipped(f"{path}: document {i}", "empty_text", "")


def write_text(paths: StrPath | Sequence[StrPath], out_pattern: str, max_samples_per_shard: int = 2000) -> ShardReport:
    """Text documents: ``.jsonl`` files (one ``{"text": ...}`` object a line, other fields kept) and ``.txt`` files
    (documents separated by a line holding only ``---``; a file without such a line is one document). Paragraphs
    inside a document are separated by blank lines and kept as they are."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = [existing(p, "text file") for p in paths]
    for f in files:
        if f.suffix not in (".jsonl", ".txt"):
            raise ValueError(f"{f}: text input must be .jsonl or .txt")

    def records() -> Iterator[_Record | _Skipped]:
        for f in files:
            yield from _text_records(f)

    return _write(records(), out_pattern, max_samples_per_shard, ", ".join(map(str, files)))


def write_coco_captions(
    captions_json: StrPath, image_root: StrPath, out_pattern: str, max_samples_per_shard: int = 2000
) -> ShardReport:
    """COCO captions (``images`` with id and file_name relative to ``image_root``, ``annotations`` with image_id and
    caption): one sample per caption, its image's bytes repeated, so every caption is a training pair. Samples of one
    image are consecutive; ``caption_id`` is the annotation id when it has one."""
    path, root = Path(captions_json), existing(image_root, "image root", directory=True)
    data = read_json(path, "a COCO captions json")
    files = {}
    for i, im in enumerate(_json_list(data, "images", path)):
        files[_field(im, "id", path, f"images[{i}]")] = _field(im, "file_name", path, f"images[{i}]")
    by_image: dict[object, list[tuple[int, dict]]] = {}
    for i, ann in enumerate(_json_list(data, "annotations", path)):
        _field(ann, "caption", path, f"annotations[{i}]")
        by_image.setdefault(_field(ann, "image_id", path, f"annotations[{i}]"), []).append((i, ann))

    def records() -> Iterator[_Record | _Skipped]:
        for image_id, anns in by_image.items():
            for i, ann in anns:
                item, caption = f"{path.name} annotations[{i}]", ann["caption"]
                if image_id not in files:
                    yield _Skipped(item, "unknown_image_id", f"image_id {image_id} is not in 'images'")
                elif not isinstance(caption, str) or not caption.strip():
                    yield _Skipped(item, "empty_text", "empty caption")
                else:
                    meta = {"kind": "caption", "caption": caption.strip(), "image_id": image_id}
                    if "id" in ann:
                        meta["caption_id"] = ann["id"]
                    yield _Record(f"{image_id}-{ann.get('id', i)}", item, meta, root / files[image_id])

    return _write(records(), out_pattern, max_samples_per_shard, str(path))


_CC3M_IMAGE_COLUMNS = ("image", "path", "url")


def _tsv_rows(path: Path) -> Iterator[tuple[str, str, str] | _Skipped]:
    """(item, caption, image) per row of a caption<TAB>image table, with or without a header row."""
    with path.open(encoding="utf-8", newline="") as f:
        cap, img, width = 0, 1, 2
        for n, line in enumerate(f, 1):
            cells = line.rstrip("\r\n").split("\t")
            if n == 1:
                names = [c.strip().lower() for c in cells]
                image_col = next((c for c in _CC3M_IMAGE_COLUMNS if c in names), None)
                if "caption" in names and image_col is not None:
                    cap, img, width = names.index("caption"), names.index(image_col), len(names)
                    continue
            if not line.strip():
                continue
            if len(cells) != width:
                yield _Skipped(f"{path}:{n}", "malformed_row", f"expected {width} tab-separated columns")
            else:
                yield f"{path}:{n}", cells[cap], cells[img]


def _parquet_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors for a file that is not parquet
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    names = table.schema_arrow.names
    image_col = next((c for c in _CC3M_IMAGE_COLUMNS if c in names), None)
    if "caption" not in names or image_col is None:
        raise ValueError(f"{path}: needs a 'caption' column and one of {_CC3M_IMAGE_COLUMNS}; it has {names}")
    row = 0
    for batch in table.iter_batches(columns=["caption", image_col]):
        for caption, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            yield f"{path} row {row}", caption, image
            row += 1


def write_cc3m(
    table: StrPath, out_pattern: str, max_samples_per_shard: int = 2000, *, image_root: StrPath | None = None
) -> ShardReport:
    """CC3M-style image-text pairs from a ``.tsv`` (caption<TAB>image, optionally a ``caption``/``url|image|path``
    header row) or a ``.parquet`` (``caption`` and ``image``, ``path`` or ``url`` columns). Images must be local
    files, relative to ``image_root`` (default: the table's directory); ``image_id`` is the path as written."""
    path = existing(table, "CC3M table")
    root = existing(image_root, "image root", directory=True) if image_root is not None else path.parent
    if path.suffix not in (".tsv", ".parquet"):
        raise ValueError(f"{path}: a CC3M table must be .tsv or .parquet")

    def records() -> Iterator[_Record | _Skipped]:
        rows = _tsv_rows(path) if path.suffix == ".tsv" else _parquet_rows(path)
        for n, row in enumerate(rows):
            if isinstance(row, _Skipped):
                yield row
                continue
            item, caption, image = row
            if not isinstance(caption, str) or not caption.strip():
                yield _Skipped(item, "empty_text", "empty caption")
            elif not isinstance(image, str) or not image.strip():
                yield _Skipped(item, "missing_image", f"the image cell holds {type(image).__name__}, not a path")
            elif is_remote(image):
                yield _Skipped(item, "remote_image", f"{image}: only local files are read; download the images first")
            else:
                meta = {"kind": "caption", "caption": caption.strip(), "image_id": image}
                yield _Record(f"row{n}", item, meta, root / image)

    return _write(records(), out_pattern, max_samples_per_shard, str(path))


def _vqa_images(image_pattern: str | None, questions: dict, questions_path: Path):
    """image_id -> image path relative to the root, or None when the id is not listed."""
    if image_pattern is None:
        subtype = questions.get("data_subtype")
        if not isinstance(subtype, str):
            raise ValueError(
                f"{questions_path} has no 'data_subtype'; give image_pattern ('{{image_id}}' format or json)"
            )
        return lambda image_id: f"{subtype}/COCO_{subtype}_{int(image_id):012d}.jpg"
    if "{" in image_pattern:
        try:
            image_pattern.format(image_id=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"image_pattern {image_pattern!r} may only use {{image_id}}: {e}") from None
        return lambda image_id: image_pattern.format(image_id=image_id)
    path = Path(image_pattern)
    mapping = read_json(path, "an image mapping json")
    if isinstance(mapping, dict) and "images" in mapping:
        files = {
            str(_field(im, "id", path, f"images[{i}]")): _field(im, "file_name", path, f"images[{i}]")
            for i, im in enumerate(_json_list(mapping, "images", path))
        }
    elif isinstance(mapping, dict):
        files = {str(k): v for k, v in mapping.items()}
    else:
        raise ValueError(f"{path}: an image mapping is a COCO json with 'images' or an object image_id -> file")
    return lambda image_id: files.get(str(image_id))


def _answers(answers: object, path: Path, qid: object) -> list[str]:
    if isinstance(answers, list) and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        return [a["answer"] for a in answers]
    raise ValueError(f"{path}: question_id {qid}: 'answers' must be a list of {{'answer': str, ...}}")


def write_vqa(
    questions_json: StrPath,
    annotations_json: StrPath,
    image_root: StrPath,
    out_pattern: str,
    max_samples_per_shard: int = 2000,
    *,
    image_pattern: str | None = None,
) -> ShardReport:
    """VQAv2 questions + annotations: one sample per question with all human answers and the multiple-choice one.

    Images: ``image_pattern`` is a format string with ``{image_id}`` (e.g. ``val2014/{image_id:012d}.jpg``), or a
    json file (COCO captions json with ``images``, or an object mapping image id to file name); by default COCO's
    ``{data_subtype}/COCO_{data_subtype}_{image_id:012d}.jpg`` with the questions file's ``data_subtype``. Paths are
    relative to ``image_root``. A question without an annotation is skipped and reported."""
    qpath, apath = Path(questions_json), Path(annotations_json)
    root = existing(image_root, "image root", directory=True)
    qdata, adata = read_json(qpath, "a VQA questions json"), read_json(apath, "a VQA annotations json")
    questions, annotations = _json_list(qdata, "questions", qpath), _json_list(adata, "annotations", apath)
    image_of = _vqa_images(image_pattern, qdata, qpath)
    by_qid = {_field(a, "question_id", apath, f"annotations[{i}]"): a for i, a in enumerate(annotations)}

    def records() -> Iterator[_Record | _Skipped]:
        for i, q in enumerate(questions):
            item = f"{qpath.name} questions[{i}]"
            qid = _field(q, "question_id", qpath, f"questions[{i}]")
            image_id = _field(q, "image_id", qpath, f"questions[{i}]")
            question = _field(q, "question", qpath, f"questions[{i}]")
            ann = by_qid.get(qid)
            if ann is None:
                yield _Skipped(item, "no_annotation", f"question_id {qid} has no annotation in {apath}")
                continue
            if ann.get("image_id", image_id) != image_id:
                yield _Skipped(item, "image_id_mismatch", f"question_id {qid}: annotation's image differs")
                continue
            answers = _answers(_field(ann, "answers", apath, f"question_id {qid}"), apath, qid)
            meta = {
                "kind": "vqa",
                "question": question,
                "question_id": qid,
                "image_id": image_id,
                "answers": answers,
                "answer": _field(ann, "multiple_choice_answer", apath, f"question_id {qid}"),
            }
            meta.update({k: ann[k] for k in ("question_type", "answer_type") if k in ann})
            file = image_of(image_id)
            if file is None:
                yield _Skipped(item, "missing_image", f"image_id {image_id} is not in {image_pattern}")
                continue
            yield _Record(f"q{qid}", item, meta, root / file)

    return _write(records(), out_pattern, max_samples_per_shard, str(qpath))


def write_glue(
    tsv: StrPath,
    text_col: str,
    out_pattern: str,
    max_samples_per_shard: int = 2000,
    *,
    text_b_col: str | None = None,
    label_col: str = "label",
) -> ShardReport:
    """A GLUE-style tsv with a header row (unquoted cells, as GLUE ships them): one classification sample a row, the
    label kept as a string. ``idx`` is the row's ``index``/``idx``/``id`` column when there is one."""
    path = existing(tsv, "GLUE tsv")
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), [])
    for col in (text_col, text_b_col, label_col):
        if col is not None and col not in header:
            raise ValueError(f"{path}: no column {col!r}; the header has {header}")
    idx_col = next((c for c in ("index", "idx", "id") if c in header), None)

    def records() -> Iterator[_Record | _Skipped]:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            for row in reader:
                n = reader.line_num
                item = f"{path}:{n}"
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    yield _Skipped(item, "malformed_row", f"{len(row)} columns, the header has {len(header)}")
                    continue
                cells = dict(zip(header, row, strict=True))
                if not cells[text_col].strip():
                    yield _Skipped(item, "empty_text", f"empty {text_col!r}")
                    continue
                if not cells[label_col].strip():
                    yield _Skipped(item, "missing_label", f"empty {label_col!r}")
                    continue
                meta = {
                    "kind": "classification",
                    "text": cells[text_col],
                    "text_b": cells[text_b_col] if text_b_col else None,
                    "label": cells[label_col],
                }
                if idx_col is not None:
                    meta["idx"] = cells[idx_col]
                yield _Record(f"{path.stem}-{n}", item, meta)

    try:
        return _write(records(), out_pattern, max_samples_per_shard, str(path))
    except csv.Error as e:
        raise ValueError(f"{path}: {e}") from None


def _choice_error(obj: dict) -> str | None:
    choices, label = obj.get("choices"), obj.get("label")
    if not isinstance(obj.get("question"), str):
        return "no 'question' string"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return "'choices' must be a list of at least two strings"
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        return f"'label' must be an index into the {len(choices)} choices, got {label!r}"
    return None


def _instruction_error(obj: dict) -> str | None:
    for name in ("instruction", "output"):
        if not isinstance(obj.get(name), str):
            return f"no {name!r} string"
    for name in ("input", "task"):
        if not isinstance(obj.get(name, ""), str):
            return f"{name!r} must be a string"
    return None


def write_jsonl(path: StrPath, kind: str, out_pattern: str, max_samples_per_shard: int = 2000) -> ShardReport:
    """``choice`` ({question, choices, label: int}) or ``instruction`` ({instruction, output, input = "", task =
    the file's stem}) records, one JSON object a line; either may name an ``image`` (null, or a path relative to the
    file's directory), which becomes the sample's image member. Malformed lines and invalid records are skipped and
    reported; if no line is valid JSON it raises."""
    if kind not in ("choice", "instruction"):
        raise ValueError(f"write_jsonl writes 'choice' or 'instruction' samples, not {kind!r}")
    path = existing(path, f"{kind} jsonl")
    check = _choice_error if kind == "choice" else _instruction_error

    def records() -> Iterator[_Record | _Skipped]:
        for rec in _jsonl(path):
            if isinstance(rec, _Skipped):
                yield rec
                continue
            n, obj = rec
            item, error = f"{path}:{n}", check(obj)
            if error is None and not isinstance(obj.get("image") or "", str):
                error = "'image' must be a path or null"
            if error is not None:
                yield _Skipped(item, "invalid_record", error)
                continue
            meta = {**obj, "kind": kind}
            image = meta.pop("image", None)
            if kind == "instruction":
                meta.setdefault("task", path.stem)
                meta.setdefault("input", "")
            yield _Record(f"{path.stem}-{n}", item, meta, path.parent / image if image else None)

    return _write(records(), out_pattern, max_samples_per_shard, str(path))


def _report_path(out_pattern: str) -> Path:
    out = Path(out_pattern)
    name = out.name.split("%")[0].rstrip("-_.") or "shards"
    return out.parent / f"{name}-report.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.shards", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="format", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="shard pattern with a shard number, e.g. 'DIR/name-%%06d.tar'")
    common.add_argument(
        "--max_per_shard", "--max-per-shard", type=int, default=2000, help="samples per shard (default 2000)"
    )

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    s = add("text", "text documents from .jsonl ({'text': ...} a line) and .txt files (documents split by '---')")
    s.add_argument("paths", nargs="+", type=Path)
    s = add("coco", "COCO captions json + image root: one caption sample per caption")
    s.add_argument("captions_json", type=Path)
    s.add_argument("image_root", type=Path)
    s = add("cc3m", "CC3M-style caption/image table (.tsv or .parquet) with local image paths")
    s.add_argument("table", type=Path)
    s.add_argument(
        "--image_root",
        "--image-root",
        type=Path,
        help="directory the image paths are relative to (default: the table's)",
    )
    s = add("vqa", "VQAv2 questions + annotations json and an image root")
    s.add_argument("questions_json", type=Path)
    s.add_argument("annotations_json", type=Path)
    s.add_argument("image_root", type=Path)
    s.add_argument(
        "--image_pattern",
        "--image-pattern",
        help="format with {image_id}, or a json (COCO captions / id->file mapping)",
    )
    s = add("glue", "GLUE-style tsv with a header row: classification samples")
    s.add_argument("tsv", type=Path)
    s.add_argument("--text_col", "--text-col", required=True)
    s.add_argument("--text_b_col", "--text-b-col")
    s.add_argument("--label_col", "--label-col", default="label")
    s = add("jsonl", "multiple-choice or instruction records, one JSON object a line")
    s.add_argument("path", type=Path)
    s.add_argument("--kind", required=True, choices=("choice", "instruction"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: writes the shards, prints the report and saves it beside them as ``NAME-report.json``."""
    args = _parser().parse_args(argv)
    out, n = args.out, args.max_per_shard
    jobs = {
        "text": lambda: write_text(args.paths, out, n),
        "coco": lambda: write_coco_captions(args.captions_json, args.image_root, out, n),
        "cc3m": lambda: write_cc3m(args.table, out, n, image_root=args.image_root),
        "vqa": lambda: write_vqa(
            args.questions_json, args.annotations_json, args.image_root, out, n, image_pattern=args.image_pattern
        ),
        "glue": lambda: write_glue(
            args.tsv, args.text_col, out, n, text_b_col=args.text_b_col, label_col=args.label_col
        ),
        "jsonl": lambda: write_jsonl(args.path, args.kind, out, n),
    }
    try:
        report = jobs[args.format]()
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = _report_path(out)
    path.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report.summary())
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
