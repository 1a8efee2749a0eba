"""What every benchmark reader returns: the example types, ``TaskData`` (examples plus a ``ReadReport``) and the
errors a bad example raises (see the ``data.tasks`` package docstring for the error policy)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

StrPath = str | os.PathLike
OnError = Literal["error", "skip"]
ExampleId = int | str

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
