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

Bad input. Problems with a whole file (missing file, not JSON, not UTF-8, a missing top-level key or tsv/csv column,
no examples at all: empty, header only, or every example skipped) always raise. Problems with one example (a
missing image, a VQA question without annotation, a malformed jsonl line, a missing or mistyped field, a label
outside the task's label set, an id an earlier example has) raise by default, with the file, line or id, the field
and what was expected; with ``on_error="skip"`` the example is left out and counted by reason in the report
(``report.to_dict()`` is meant for a results json). :class:`TaskDataError` (a ``ValueError``) and
:class:`MissingImageError` (a ``FileNotFoundError``) carry the ``reason`` a skip is counted under.

The bundled world (``data/world.py``) writes VQAv2, COCO captions, an RTE-style tsv and a multiple-choice jsonl,
so the same readers serve it; :func:`world_files` names its files and ``read_world_*(world_dir, split)`` read one
split. :data:`TASKS` maps benchmark names to their reader, kind and label set.

Modules: ``examples`` (the example types, ``TaskData``, ``ReadReport``, errors), ``parsing`` (the helpers every
reader shares), one module per family (``vqa``, ``captions``, ``classification``, ``choice``, ``instructions``),
``world`` (the bundled world's files) and ``registry`` (``TASKS``, ``get_task``). Everything public is importable
from here.
"""

from data.tasks.captions import read_coco_captions, read_flickr30k_tokens, read_karpathy
from data.tasks.choice import (
    COPA_CONNECTORS,
    hellaswag_preprocess,
    read_arc,
    read_boolq,
    read_choice_jsonl,
    read_copa,
    read_hellaswag,
    read_piqa,
    read_storycloze,
    read_winogrande,
)
from data.tasks.classification import BINARY, GLUE_FORMATS, LABELS, NLI2, NLI3, read_glue, read_nlvr2, read_snli_ve
from data.tasks.examples import (
    CaptionExample,
    ChoiceExample,
    ClassificationExample,
    E,
    ExampleId,
    InstructionExample,
    MissingImageError,
    OnError,
    ReadReport,
    StrPath,
    TaskData,
    TaskDataError,
    VQAExample,
)
from data.tasks.instructions import read_instructions
from data.tasks.registry import TASKS, Kind, TaskSpec, get_task
from data.tasks.vqa import coco_image_files, read_vqa
from data.tasks.world import read_world_captions, read_world_choice, read_world_entail, read_world_vqa, world_files

__all__ = [
    "BINARY",
    "COPA_CONNECTORS",
    "GLUE_FORMATS",
    "LABELS",
    "NLI2",
    "NLI3",
    "TASKS",
    "CaptionExample",
    "ChoiceExample",
    "ClassificationExample",
    "E",
    "ExampleId",
    "InstructionExample",
    "Kind",
    "MissingImageError",
    "OnError",
    "ReadReport",
    "StrPath",
    "TaskData",
    "TaskDataError",
    "TaskSpec",
    "VQAExample",
    "coco_image_files",
    "get_task",
    "hellaswag_preprocess",
    "read_arc",
    "read_boolq",
    "read_choice_jsonl",
    "read_coco_captions",
    "read_copa",
    "read_flickr30k_tokens",
    "read_glue",
    "read_hellaswag",
    "read_instructions",
    "read_karpathy",
    "read_nlvr2",
    "read_piqa",
    "read_snli_ve",
    "read_storycloze",
    "read_vqa",
    "read_winogrande",
    "read_world_captions",
    "read_world_choice",
    "read_world_entail",
    "read_world_vqa",
    "world_files",
]
