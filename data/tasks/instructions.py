"""FLAN-style instruction data (one JSON object a line) in, ``InstructionExample`` out."""

from __future__ import annotations

from pathlib import Path

from data.tasks.examples import InstructionExample, OnError, StrPath, TaskData, TaskDataError
from data.tasks.parsing import ImageFiles, get_field, read_jsonl_records, string_list


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
    images = ImageFiles(Path(jsonl))

    def build(path: Path, n: int, index: int, rec: dict) -> InstructionExample:
        where = f"{path}:{n}"
        instruction, output = get_field(rec, "instruction", where), get_field(rec, "output", where)
        if not instruction.strip():
            raise TaskDataError(f"{where}: field 'instruction' is empty; expected the task in words", "bad_field")
        text = get_field(rec, "input", where) if "input" in rec else ""
        task = get_field(rec, "task", where) if "task" in rec else ""
        image = None
        if rec.get("image") is not None:
            image = images.find([root / get_field(rec, "image", where)], f"line {n}")
        options: tuple[str, ...] = ()
        if rec.get("options"):
            options = tuple(o.strip() for o in string_list(rec, "options", where, 2))
            if len(set(options)) < len(options) or not all(options):
                raise TaskDataError(
                    f"{where}: field 'options' is {rec['options']!r}; expected distinct non-empty answers", "bad_field"
                )
            if output.strip() not in options:
                raise TaskDataError(
                    f"{where}: output {output!r} is not one of the options {list(options)}", "bad_label"
                )
        return InstructionExample(rec.get("id", index), task, instruction, text, output, image, options)

    return read_jsonl_records(jsonl, "instruction jsonl", build, on_error, unique_ids=False)
