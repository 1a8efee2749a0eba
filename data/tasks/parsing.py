"""The helpers every benchmark reader shares: the collector that raises a bad example's error or skips and counts
it, field checks whose errors name the file, line or id and what was expected, JSON and JSONL reading through
``metalm.io``, and image lookup."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic

from data.shards import existing
from data.tasks.examples import E, ExampleId, MissingImageError, OnError, ReadReport, StrPath, TaskData, TaskDataError
from metalm.io import JSONFileError, NotUTF8Error, iter_jsonl, read_json

_log = logging.getLogger(__name__)

_SKIPPABLE = (TaskDataError, MissingImageError)


_ID_FIELDS = ("question_id", "image_id", "id")


def example_key(example: Any) -> tuple[str, ExampleId]:
    """The id field of an example (``question_id``, ``image_id`` or ``id``) and its value."""
    name = next(f for f in _ID_FIELDS if hasattr(example, f))
    return name, getattr(example, name)


class Collector(Generic[E]):
    """Builds examples one at a time; an example's error is raised (``on_error="error"``) or counted and skipped.

    ``what`` says what the file should hold, for the error when it holds no example. With ``unique_ids`` an example
    whose id an earlier one has is an error (reason ``duplicate_id``): results are keyed by id, so a repeated id
    would silently drop or merge examples."""

    def __init__(self, source: StrPath, on_error: OnError, what: str = "examples", unique_ids: bool = True):
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.what = what
        self.report = ReadReport(str(source))
        self.examples: list[E] = []
        self.seen: set[ExampleId] | None = set() if unique_ids else None

    def add(self, build: Callable[..., E | None], *args: Any) -> None:
        try:
            example = build(*args)
            if example is not None and self.seen is not None:
                self._check_unique(example)
        except _SKIPPABLE as e:
            if self.on_error == "error":
                raise
            self.report.skip(e.reason, str(e))
            return
        if example is not None:
            self.examples.append(example)

    def _check_unique(self, example: E) -> None:
        name, key = example_key(example)
        if key in self.seen:
            raise TaskDataError(
                f"{self.report.source}: {name} {key!r} appears twice; expected every example's {name} to be unique",
                "duplicate_id",
            )
        self.seen.add(key)

    def done(self) -> TaskData[E]:
        """The examples read; an error naming the file when there are none (an empty file, or every example bad)."""
        self.report.examples = len(self.examples)
        counts = ", ".join(f"{r} {n}" for r, n in sorted(self.report.skipped.items()))
        if not self.examples:
            if self.report.skipped:
                raise TaskDataError(
                    f"{self.report.source}: every example was skipped ({counts}); first: {self.report.messages[0]}",
                    "empty",
                )
            raise TaskDataError(f"{self.report.source}: no examples; expected {self.what}", "empty")
        if self.report.skipped:
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


def not_utf8(path: Path, what: str, err: UnicodeDecodeError) -> TaskDataError:
    """The error for a text file that is not UTF-8 (a whole-file problem: never skipped)."""
    return TaskDataError(f"{path}: not UTF-8 ({err}); expected {what} in UTF-8", "not_utf8")


def jsonl_records(path: Path, what: str = "a JSONL file") -> Iterator[tuple[int, int, dict | TaskDataError]]:
    """(line number, record index among non-blank lines, object or the error for a malformed line); a line that is
    not UTF-8 raises at once, naming the file."""
    for index, (n, obj) in enumerate(iter_jsonl(path, what)):
        if isinstance(obj, NotUTF8Error):
            raise TaskDataError(str(obj), "not_utf8")
        yield n, index, TaskDataError(str(obj), "bad_json") if isinstance(obj, JSONFileError) else obj


def _record(obj: dict | TaskDataError) -> dict:
    if isinstance(obj, TaskDataError):
        raise obj
    return obj


def read_jsonl_records(
    path: StrPath,
    what: str,
    build: Callable[[Path, int, int, dict], E | None],
    on_error: OnError,
    unique_ids: bool = True,
) -> TaskData[E]:
    """``build(path, line, index, record)`` for every record of a jsonl file (see ``Collector`` for ``unique_ids``)."""
    path = existing(path, what)
    out: Collector[E] = Collector(path, on_error, f"a {what} with one example a line", unique_ids)

    def one(n: int, index: int, obj: dict | TaskDataError) -> E | None:
        return build(path, n, index, _record(obj))

    for n, index, obj in jsonl_records(path, f"a {what}"):
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
