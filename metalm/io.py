"""File input and output for every room: JSON and JSONL reading whose errors name the file, the line and what was
expected, and atomic writes, so a crash mid-save never leaves a broken file or directory where a good one was."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


class JSONFileError(ValueError):
    """A JSON file that does not parse, or a JSONL line that is not one JSON object; the message names the file (and
    line), what went wrong and what was expected. ``detail`` is what went wrong alone."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


class NotUTF8Error(JSONFileError):
    """A JSONL line that is not UTF-8: the file's encoding is wrong, so a reader may treat the whole file as bad."""


def _file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected {what}")
    return path


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed content of a UTF-8 JSON file; ``what`` says what it should hold (``"a COCO captions json"``)."""
    path = _file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        detail = f"line {e.lineno} column {e.colno} ({e.msg})"
        raise JSONFileError(f"{path}: not valid JSON at {detail}; expected {what}", detail) from None
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{path}: not UTF-8 ({e}); expected {what}", f"not UTF-8 ({e})") from None


def iter_jsonl(path: str | os.PathLike, what: str) -> Iterator[tuple[int, dict | JSONFileError]]:
    """(line number, object) per non-blank line of a JSONL file, with a ``JSONFileError`` in place of the object
    for a line that is not one JSON object (a ``NotUTF8Error`` for one that is not UTF-8), so a caller can skip and
    count bad lines or raise the first."""
    path = _file(path, what)
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except UnicodeDecodeError as e:
                obj = NotUTF8Error(f"{path}:{n}: not UTF-8 ({e}); expected {what} in UTF-8", f"not UTF-8 ({e})")
            except ValueError as e:  # JSONDecodeError
                obj = JSONFileError(f"{path}:{n}: malformed line ({e}); expected one JSON object per line", str(e))
            yield n, obj


def read_jsonl(path: str | os.PathLike, what: str) -> list[dict]:
    """Every object of a JSONL file (blank lines skipped); the first malformed line raises ``JSONFileError``."""
    rows = []
    for _, obj in iter_jsonl(path, what):
        if isinstance(obj, JSONFileError):
            raise obj
        rows.append(obj)
    return rows


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path in the same directory, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors (never pickle), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh temporary directory with ``write(tmp_dir)``, then swap it in for ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.parent / f".{path.name}.old"
    try:
        write(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def pyplot():
    """matplotlib's ``pyplot`` on the Agg backend (plots go to files; no display is needed), imported on first use:
    it is heavy, and only the jobs that draw a plot need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
