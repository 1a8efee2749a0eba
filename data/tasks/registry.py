"""``TASKS``: every benchmark by name, with its example kind, reader and (for classification) label set, text
fields and label words; ``get_task`` looks one up."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from data.tasks.captions import read_coco_captions, read_flickr30k_tokens, read_karpathy
from data.tasks.choice import (
    read_arc,
    read_boolq,
    read_copa,
    read_hellaswag,
    read_piqa,
    read_storycloze,
    read_winogrande,
)
from data.tasks.classification import GLUE_FORMATS, LABELS, read_glue, read_nlvr2, read_snli_ve
from data.tasks.examples import TaskData
from data.tasks.vqa import read_vqa
from data.tasks.world import read_world_captions, read_world_choice, read_world_entail, read_world_vqa

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
    "nlvr2": TaskSpec(
        "nlvr2", "classification", read_nlvr2, LABELS["nlvr2"], ("sentence",), {"False": "false", "True": "true"}
    ),
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
    "world-entail": TaskSpec(
        "world-entail",
        "classification",
        read_world_entail,
        LABELS["world-entail"],
        ("premise", "hypothesis"),
        _NLI2_WORDS,
    ),
    "world-choice": TaskSpec("world-choice", "choice", read_world_choice),
}
"""Benchmarks by name. Every world reader takes ``(world_dir, split)``; the others take the files listed in their
docstrings (e.g. ``TASKS["sst2"].reader("SST-2/dev.tsv")``, ``TASKS["vqav2"].reader(questions, annotations,
images_dir)``)."""


def get_task(name: str) -> TaskSpec:
    """``TASKS[name]``, with an error that lists the known names."""
    if name not in TASKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
