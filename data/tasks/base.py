"""What every benchmark reader returns (example types, ``TaskData``, ``ReadReport``, errors) and the helpers they
share: the collector that raises or skips and counts a bad example, field checks, JSON and JSONL reading and image
lookup. See the ``data.tasks`` package docstring for the error policy."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from data.shards import existing
from metalm.io import JSONFileError, iter_jsonl, read_json

StrPath = str | os.PathLike
OnError = Literal["error", "skip"]
ExampleId = int | str

_log = logging.getLogger(__name__)
_MESSAGES = 20


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
        return {
            "source": self.source,
            "examples": self.examples,
            "skipped": dict(sorted(self.skipped.items())),
            "skip_messages": list(self.messages),
        }


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


class Collector(Generic[E]):
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
            _log.warning(
                "%s: skipped %d example(s) (%s); first: %s",
                self.report.source,
                self.report.n_skipped,
                counts,
                self.report.messages[0],
            )
        return TaskData(self.examples, self.report)


def read_task_json(path: StrPath, what: str) -> Any:
    """``metalm.io.read_json`` with its parse errors as ``TaskDataError`` (reason ``bad_json``)."""
    try:
        return read_json(path, what)
    except JSONFileError as e:
        raise TaskDataError(str(e), "bad_json") from None


def top_list(obj: Any, key: str, path: Path, what: str, optional: bool = False) -> list | None:
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


def get_field(
    obj: Mapping, key: str, where: str, kind: type | tuple[type, ...] = str, expected: str | None = None
) -> Any:
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


def string_list(obj: Mapping, key: str, where: str, min_len: int = 1) -> list[str]:
    """``obj[key]`` checked to be a list of at least ``min_len`` strings."""
    value = get_field(obj, key, where, list, f"a list of at least {min_len} strings")
    if len(value) < min_len or not all(isinstance(v, str) for v in value):
        raise TaskDataError(
            f"{where}: field {key!r} is {value!r}; expected a list of at least {min_len} strings", "bad_field"
        )
    return value


def bad_label(where: str, label: Any, allowed: Sequence[Any], task: str) -> TaskDataError:
    """The error for a label outside the task's label set (reason ``bad_label``)."""
    return TaskDataError(f"{where}: label {label!r} is not in the {task} label set {list(allowed)}", "bad_label")


def jsonl_records(path: Path) -> Iterator[tuple[int, int, dict | TaskDataError]]:
    """(line number, record index among non-blank lines, object or the error for a malformed line)."""
    for index, (n, obj) in enumerate(iter_jsonl(path, "a JSONL file")):
        yield n, index, TaskDataError(str(obj), "bad_json") if isinstance(obj, JSONFileError) else obj


def _record(obj: dict | TaskDataError) -> dict:
    if isinstance(obj, TaskDataError):
        raise obj
    return obj


def read_jsonl_records(
    path: StrPath, what: str, build: Callable[[Path, int, int, dict], E | None], on_error: OnError
) -> TaskData[E]:
    """``build(path, line, index, record)`` for every record of a jsonl file."""
    path = existing(path, what)
    out: Collector[E] = Collector(path, on_error)

    def one(n: int, index: int, obj: dict | TaskDataError) -> E | None:
        return build(path, n, index, _record(obj))

    for n, index, obj in jsonl_records(path):
        out.add(one, n, index, obj)
    return out.done()


class ImageFiles:
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


def int_if_digits(text: str) -> ExampleId:
    """An id cell as an int when it is all digits (COCO, Flickr ids), else as written."""
    return int(text) if text.isdigit() else text
