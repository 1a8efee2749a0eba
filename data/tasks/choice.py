"""Multiple-choice benchmarks (HellaSwag, PIQA, COPA, StoryCloze, WinoGrande, ARC, BoolQ and a generic choice
jsonl) in, ``ChoiceExample`` out, with lm-evaluation-harness' templates."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from data.shards import existing
from data.tasks.examples import ChoiceExample, OnError, StrPath, TaskData, TaskDataError
from data.tasks.parsing import (
    Collector,
    bad_label,
    get_field,
    jsonl_records,
    not_utf8,
    read_jsonl_records,
    string_list,
)


def _label_index(value: Any, n: int, where: str, task: str, offset: int = 0) -> int:
    """An option index from an int or digit string label (``offset`` 1 for 1-based labels)."""
    allowed = list(range(offset, n + offset))
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise bad_label(where, value, allowed, task)
    if int(value) not in allowed:
        raise bad_label(where, value, allowed, task)
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
            ctx = get_field(rec, "ctx_a", where) + " " + get_field(rec, "ctx_b", where).capitalize()
        else:
            ctx = get_field(rec, "ctx", where, str, "a string (or ctx_a and ctx_b)")
        activity = rec.get("activity_label")
        context = hellaswag_preprocess(f"{activity}: {ctx}" if isinstance(activity, str) else ctx)
        endings = string_list(rec, "endings", where, 2)
        label = (
            _label_index(get_field(rec, "label", where, (int, str)), len(endings), where, "hellaswag")
            if labeled
            else None
        )
        meta = {k: rec[k] for k in ("split_type", "source_id") if k in rec}
        return ChoiceExample(example_id, [(context, " " + hellaswag_preprocess(e)) for e in endings], label, [], meta)

    return read_jsonl_records(jsonl, "HellaSwag jsonl", build, on_error)


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
        try:
            labels = [line.strip() for line in lpath.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise not_utf8(lpath, "a PIQA labels file (0 or 1 a line)", e) from None
        n_records = sum(1 for _ in jsonl_records(path, "a PIQA jsonl"))
        if len(labels) != n_records:
            raise TaskDataError(
                f"{lpath}: {len(labels)} labels for {n_records} records in {path}; expected one label "
                "a line per record",
                "label_count",
            )

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("id", index)
        where = f"{path}:{n} (id {example_id})"
        goal, sol1, sol2 = (get_field(rec, k, where) for k in ("goal", "sol1", "sol2"))
        label = None
        if labels is not None:
            label = _label_index(labels[index], 2, f"{labels_lst}:{index + 1} (for {where})", "piqa")
        context = f"Question: {goal}\nAnswer:"
        return ChoiceExample(example_id, [(context, " " + sol1), (context, " " + sol2)], label)

    return read_jsonl_records(path, "PIQA jsonl", build, on_error)


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
        premise, question = get_field(rec, "premise", where).strip(), get_field(rec, "question", where)
        if question not in COPA_CONNECTORS:
            raise TaskDataError(f"{where}: field 'question' is {question!r}; expected 'cause' or 'effect'", "bad_field")
        choices = [get_field(rec, k, where) for k in ("choice1", "choice2")]
        label = _label_index(get_field(rec, "label", where, (int, str)), 2, where, "copa") if labeled else None
        context = f"{premise.removesuffix('.')} {COPA_CONNECTORS[question]}"
        return ChoiceExample(example_id, [(context, " " + c[:1].lower() + c[1:]) for c in choices], label)

    return read_jsonl_records(jsonl, "COPA jsonl", build, on_error)


_STORY_COLUMNS = (
    "InputStoryid",
    "InputSentence1",
    "InputSentence2",
    "InputSentence3",
    "InputSentence4",
    "RandomFifthSentenceQuiz1",
    "RandomFifthSentenceQuiz2",
)


def read_storycloze(csv_file: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """Story Cloze Test (Mostafazadeh et al. 2016; the 2016 and 2018 val/test csv files): columns ``InputStoryid,
    InputSentence1..4, RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2, AnswerRightEnding`` (1 or 2). Template
    (lm-evaluation-harness): context = the four sentences joined by spaces, continuations ``" " + quiz ending``."""
    path = existing(csv_file, "StoryCloze csv")
    out: Collector[ChoiceExample] = Collector(path, on_error, "a StoryCloze csv with one story a row")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
        except UnicodeDecodeError as e:
            raise not_utf8(path, "a StoryCloze csv", e) from None
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
        except UnicodeDecodeError as e:
            raise not_utf8(path, "a StoryCloze csv", e) from None
        except csv.Error as e:
            raise TaskDataError(f"{path}:{reader.line_num}: {e}", "malformed_row") from None
    if not out.examples and not out.report.skipped:
        raise TaskDataError(f"{path}: only a header row {header}; expected StoryCloze stories below it", "empty")
    return out.done()


def read_winogrande(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """WinoGrande (Sakaguchi et al. 2020), ``{train_xl,dev,test}.jsonl``: ``qID, sentence`` (with one ``_`` blank),
    ``option1, option2, answer`` ("1" / "2"). Partial scoring as in lm-evaluation-harness and the GPT-3 paper: option
    ``k``'s context is the sentence up to the blank with option ``k`` filled in, and the continuation (the same for
    both) is ``" "`` + the rest of the sentence after the blank, stripped."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("qID", index)
        where = f"{path}:{n} (qID {example_id})"
        sentence = get_field(rec, "sentence", where)
        if "_" not in sentence:
            raise TaskDataError(f"{where}: field 'sentence' has no '_' blank: {sentence!r}", "bad_field")
        options = [get_field(rec, k, where) for k in ("option1", "option2")]
        blank = sentence.index("_")
        rest = " " + sentence[blank + 1 :].strip()
        label = (
            _label_index(get_field(rec, "answer", where, (str, int)), 2, where, "winogrande", 1) if labeled else None
        )
        return ChoiceExample(example_id, [(sentence[:blank] + o, rest) for o in options], label)

    return read_jsonl_records(jsonl, "WinoGrande jsonl", build, on_error)


def read_arc(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """ARC-Easy / ARC-Challenge (Clark et al. 2018), ``ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl``: ``id``,
    ``question: {stem, choices: [{text, label}]}``, ``answerKey``. Choice labels are A-E on most items, 1-5 on a
    few; the label is the position of ``answerKey`` among them. Template (lm-evaluation-harness): context
    ``"Question: {stem}\\nAnswer:"``, continuations ``" " + choice text``."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("id", index)
        where = f"{path}:{n} (id {example_id})"
        question = get_field(rec, "question", where, dict, "an object {stem, choices}")
        stem = get_field(question, "stem", f"{where}: question")
        choices = get_field(question, "choices", f"{where}: question", list, "a list of {text, label}")
        texts = [get_field(c, "text", f"{where}: question.choices[{j}]") for j, c in enumerate(choices)]
        keys = [
            str(get_field(c, "label", f"{where}: question.choices[{j}]", (str, int))) for j, c in enumerate(choices)
        ]
        if len(texts) < 2:
            raise TaskDataError(
                f"{where}: field 'question.choices' has {len(texts)} choice(s); expected at least 2", "bad_field"
            )
        label = None
        if labeled:
            key = str(get_field(rec, "answerKey", where, (str, int))).strip()
            if key not in keys:
                raise bad_label(where, key, keys, "arc")
            label = keys.index(key)
        context = f"Question: {stem}\nAnswer:"
        return ChoiceExample(example_id, [(context, " " + t) for t in texts], label)

    return read_jsonl_records(jsonl, "ARC jsonl", build, on_error)


def read_boolq(jsonl: StrPath, *, labeled: bool = True, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """BoolQ (Clark et al. 2019), both published forms: the original ``{train,dev}.jsonl`` (``question, title,
    answer: bool, passage``) and SuperGLUE's ``{train,val}.jsonl`` (``question, passage, idx, label: bool``, in
    some exports the string ``"true"`` / ``"false"``).
    Template (lm-evaluation-harness): context ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, options
    ``" no"`` (0) and ``" yes"`` (1)."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        example_id = rec.get("idx", index)
        where = f"{path}:{n} (idx {example_id})"
        passage, question = get_field(rec, "passage", where), get_field(rec, "question", where)
        label = None
        if labeled:
            key = "answer" if "answer" in rec else "label"
            expected = "true or false (field 'answer', or SuperGLUE's 'label')"
            value = rec.get(key)
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # some SuperGLUE exports
                value = value.strip().lower() == "true"
            else:
                value = get_field(rec, key, where, (bool, int), expected)
            if value not in (0, 1):
                raise bad_label(where, value, [False, True], "boolq")
            label = int(value)
        context = f"{passage.strip()}\nQuestion: {question.strip()}?\nAnswer:"
        meta = {"title": rec["title"]} if "title" in rec else {}
        return ChoiceExample(example_id, [(context, " no"), (context, " yes")], label, [], meta)

    return read_jsonl_records(jsonl, "BoolQ jsonl", build, on_error)


def read_choice_jsonl(jsonl: StrPath, *, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """A generic multiple-choice jsonl, ``{"question", "choices": [str], "label": int}`` one a line: the bundled
    world's ``text/choice_{split}.jsonl`` and ``data.shards``' ``choice`` kind. Template, as ARC's: context
    ``"Question: {question}\\nAnswer:"``, continuations ``" " + choice``. The id is the record index."""

    def build(path: Path, n: int, index: int, rec: dict) -> ChoiceExample:
        where = f"{path}:{n}"
        question, choices = get_field(rec, "question", where), string_list(rec, "choices", where, 2)
        label = _label_index(get_field(rec, "label", where, int), len(choices), where, "choice")
        context = f"Question: {question}\nAnswer:"
        return ChoiceExample(index, [(context, " " + c) for c in choices], label)

    return read_jsonl_records(jsonl, "choice jsonl", build, on_error)
