"""Evaluation as a library: one evaluator per task family of the ``data.tasks`` registry, instruction following,
and the bundled world's composite.

``evaluate(task, data, settings)`` picks the evaluator by ``get_task(task).kind``:

- ``vqa``: generated answers scored with the official VQA accuracy (a test split without annotations writes the
  official submission file instead);
- ``caption``: generated captions scored with CIDEr-D and BLEU-1..4;
- ``classification``: label words ranked by log-probability, with contextual and prototypical calibration;
- ``choice``: options ranked by summed (``acc``) and mean (``acc_norm``) log-probability.

Every evaluator writes the results JSON and predictions (``settings.out``, default ``results/<benchmark>.json``),
prints the summary and returns the results dict. The scripts ``eval/<benchmark>.py`` are command lines over these.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from data.tasks import (
    CaptionExample,
    ChoiceExample,
    ReadReport,
    TaskData,
    VQAExample,
    get_task,
    read_world_captions,
    read_world_choice,
    read_world_entail,
    read_world_vqa,
)
from data.templates import CHAT_STOP, CLASSIFICATION, QA_TEMPLATE, caption_prompt, instruction_prompt, qa_prompt
from eval.icl import Demo
from eval.metrics import bleu, cider_d, normalize_vqa_answer, vqa_score
from eval.runners import (
    Outcome,
    Query,
    answer,
    choose,
    classify,
    drop_unusable,
    finish,
    limited,
    load_scorer,
    needs_pool,
    usable_pool,
)
from eval.scene import scene_naming
from eval.scoring import Scorer
from eval.settings import NEW_TOKENS, WORLD_TASKS, EvalSettings

VQA_STOP = ("\n", "Question:")
CAPTION_STOP = ("\n",)

CaptionMetric = Callable[[list, list[str]], dict[str, float]]


def demo_answer(ex) -> str:
    """The answer a VQA demonstration shows: the annotators' ``multiple_choice_answer``, else their most common."""
    return ex.meta.get("multiple_choice_answer") or Counter(ex.answers).most_common(1)[0][0]


def _answer_inputs(
    scorer: Scorer,
    data: TaskData,
    settings: EvalSettings,
    pool: list[Demo],
    query: Callable[[object], Query],
    reserve: int,
) -> tuple[list, list[Query], list[Demo], ReadReport]:
    """The examples to answer (``settings.limit`` of them, less those ``drop_unusable`` leaves out with ``reserve``
    answer tokens), their queries, the usable demonstrations and the report of what was skipped."""

    def needs(ex) -> tuple:
        q = query(ex)
        return q.key, [(q.prompt, reserve)]

    examples, report = drop_unusable(scorer, data, limited(data.examples, settings.limit), needs, settings)
    pool = usable_pool(pool, settings, report)
    needs_pool(settings, pool)
    return examples, [query(ex) for ex in examples], pool, report


def _evaluate_vqa(task, data, settings, demos, scorer, benchmark) -> dict:
    """Answer every question of ``data`` (``VQAExample``) and score it; without annotations, write the official
    submission file beside the predictions."""
    pool = [
        Demo(qa_prompt(ex.question, ex.image), " " + demo_answer(ex), ("demo", ex.question_id))
        for ex in (demos.examples if demos is not None else [])
        if ex.answers
    ]
    decode = replace(settings.decode, stop=VQA_STOP)
    scorer = scorer or load_scorer(settings)

    def query(ex: VQAExample) -> Query:
        return Query(ex.question_id, qa_prompt(ex.question, ex.image))

    examples, queries, pool, report = _answer_inputs(scorer, data, settings, pool, query, decode.max_new_tokens)
    annotated = bool(examples) and all(ex.answers for ex in examples)
    ids = [ex.question_id for ex in examples]

    def metric(answers: list[str]) -> dict[str, float]:
        if not annotated:
            return {}
        scores = vqa_score(
            dict(zip(ids, answers, strict=True)),
            {ex.question_id: ex.answers for ex in examples},
            {ex.question_id: ex.answer_type or "all" for ex in examples},
        )
        per_type = {f"vqa_accuracy/{t}": v for t, v in scores["per_answer_type"].items()}
        return {"vqa_accuracy": scores["overall"]} | per_type

    headline = "vqa_accuracy" if annotated else None
    outcome = answer(scorer, queries, pool, settings, decode, metric, headline)
    header = {
        "n": len(examples),
        "template": f"<image> {QA_TEMPLATE} [answer]",
        "decoding": decode.to_dict(),
        "answer_normalisation": (
            "official VQA evaluation (vqaEval.py at a013f00): when the human answers differ, both sides normalised "
            "(punctuation, digits, articles, contractions); when they agree, exact match"
        ),
        "data": report.to_dict(),
        "skipped": dict(report.skipped),
    }
    if not annotated:
        header["note"] = "no annotations: predictions only (see the submission file)"
    result = finish(settings, benchmark, header, outcome)
    if not annotated:
        first = [p for p in outcome.predictions if p["trial"] == 0 and p["shots"] == settings.shots[0]]
        sub = Path(result["predictions"]).with_suffix(".submission.json")
        sub.write_text(json.dumps([{"question_id": p["id"], "answer": p["prediction"]} for p in first]) + "\n")
        print(f"submission file (official results format): {sub}")
    return result


def _evaluate_caption(task, data, settings, demos, scorer, benchmark, extra_metric=None) -> dict:
    """Caption every image of ``data`` (``CaptionExample``); CIDEr-D and BLEU-1..4, plus
    ``extra_metric(ids, captions) -> {name: value}`` when given."""
    pool = [
        Demo(caption_prompt(ex.image), ex.references[0], ("demo", ex.image_id))
        for ex in (demos.examples if demos is not None else [])
        if ex.references
    ]
    decode = replace(settings.decode, stop=CAPTION_STOP)
    scorer = scorer or load_scorer(settings)

    def query(ex: CaptionExample) -> Query:
        return Query(ex.image_id, caption_prompt(ex.image))

    examples, queries, pool, report = _answer_inputs(scorer, data, settings, pool, query, decode.max_new_tokens)
    ids = [ex.image_id for ex in examples]
    refs = {ex.image_id: ex.references for ex in examples}

    def metric(captions: list[str]) -> dict[str, float]:
        preds = dict(zip(ids, captions, strict=True))
        extra = extra_metric(ids, captions) if extra_metric is not None else {}
        return {"cider_d": cider_d(preds, refs), **bleu(preds, refs), **extra}

    outcome = answer(scorer, queries, pool, settings, decode, metric, "cider_d")
    header = {
        "n": len(examples),
        "template": "<image> [caption]",
        "decoding": decode.to_dict(),
        "tokenization": "PTB-like, lower-cased, punctuation removed (eval/metrics.py)",
        "data": report.to_dict(),
        "skipped": dict(report.skipped),
    }
    return finish(settings, benchmark, header, outcome)


def _evaluate_classification(task, data, settings, demos, scorer, benchmark) -> dict:
    """Rank the task's label words (template from ``data.templates``) for every ``ClassificationExample``; ``demos``
    is the labeled pool for in-context demonstrations; ``settings.calibration`` picks the headline."""
    template = CLASSIFICATION[task]
    for ex in limited(data.examples, settings.limit):
        if ex.label is None:
            raise ValueError(f"{data.report.source}: example {ex.id} has no label; accuracy needs a labeled split")
        template.index(ex.label, f"{data.report.source}: example {ex.id}")
    pool = []
    for ex in demos.examples if demos is not None else []:
        word = template.verbalizers[template.index(ex.label, f"{demos.report.source}: example {ex.id}")]
        pool.append(Demo(template.prompt(ex.texts, ex.images), word, ("demo", ex.id)))
    scorer = scorer or load_scorer(settings)
    reserve = max(len(scorer.tokenizer.encode(v)) for v in template.verbalizers)
    examples, report = drop_unusable(
        scorer,
        data,
        limited(data.examples, settings.limit),
        lambda ex: (ex.id, [(template.prompt(ex.texts, ex.images), reserve)]),
        settings,
    )
    pool = usable_pool(pool, settings, report)
    needs_pool(settings, pool)
    labels = [template.index(ex.label, f"{data.report.source}: example {ex.id}") for ex in examples]
    queries = [Query(ex.id, template.prompt(ex.texts, ex.images)) for ex in examples]
    content_free = template.content_free(examples[0].texts) if examples else []
    outcome = classify(scorer, queries, labels, template.verbalizers, pool, settings, content_free)
    header = {
        "task": task,
        "n": len(examples),
        "template": template.describe(),
        "calibration": settings.calibration,
        "data": report.to_dict(),
        "skipped": dict(report.skipped),
    }
    if demos is not None:
        header["demonstrations"] = demos.report.to_dict()
    return finish(settings, benchmark, header, outcome)


def rank_choices(
    data: TaskData, settings: EvalSettings, demos: TaskData | None, scorer: Scorer | None
) -> tuple[list[ChoiceExample], Outcome, ReadReport]:
    """Score every option of every labeled ``ChoiceExample``; demonstrations show the right option. Returns the
    examples scored, the outcome and the report of what was read and skipped."""
    examples = limited(data.examples, settings.limit)
    missing = [ex.id for ex in examples if ex.label is None]
    if missing:
        raise ValueError(f"{data.report.source}: examples {missing[:5]} have no label; accuracy needs a labeled split")
    pool = [
        Demo(ex.options[ex.label][0], ex.options[ex.label][1], ("demo", ex.id))
        for ex in (demos.examples if demos is not None else [])
        if ex.label is not None
    ]
    needs_pool(settings, pool)
    scorer = scorer or load_scorer(settings)

    def needs(ex: ChoiceExample) -> tuple:
        return ex.id, [(ctx, len(scorer.tokenizer.encode(cont))) for ctx, cont in ex.options]

    examples, report = drop_unusable(scorer, data, examples, needs, settings)
    outcome = choose(scorer, [(ex.id, ex.options) for ex in examples], [ex.label for ex in examples], pool, settings)
    return examples, outcome, report


def _evaluate_choice(task, data, settings, demos, scorer, benchmark) -> dict:
    """Multiple choice (``ChoiceExample``): accuracy by summed and by mean log-probability of each option."""
    examples, outcome, report = rank_choices(data, settings, demos, scorer)
    first = examples[0].options[0] if examples else ("", "")
    template = f"each option is (context, continuation), e.g. {first[0]!r} + {first[1]!r} (see data/tasks.py)"
    header = {
        "task": task,
        "n": len(examples),
        "template": template,
        "data": report.to_dict(),
        "skipped": dict(report.skipped),
    }
    return finish(settings, benchmark, header, outcome)


Evaluator = Callable[[str, TaskData, EvalSettings, "TaskData | None", "Scorer | None", str], dict]
"""``(task, data, settings, demos, scorer, benchmark) -> results``: ``scorer`` None loads ``settings.checkpoint``;
``benchmark`` names the results."""

EVALUATORS: dict[str, Evaluator] = {
    "vqa": _evaluate_vqa,
    "caption": _evaluate_caption,
    "classification": _evaluate_classification,
    "choice": _evaluate_choice,
}
"""The evaluator of each task kind of ``data.tasks.TaskSpec``."""


def evaluate(
    task: str,
    data: TaskData,
    settings: EvalSettings,
    demos: TaskData | None = None,
    scorer: Scorer | None = None,
    benchmark: str | None = None,
) -> dict:
    """Evaluate ``data`` of the registered ``task`` with its kind's evaluator; ``benchmark`` (default: the task's
    name) names the results; ``scorer`` reuses a loaded model instead of loading ``settings.checkpoint``."""
    return EVALUATORS[get_task(task).kind](task, data, settings, demos, scorer, benchmark or task)


def evaluate_instructions(
    data: TaskData,
    settings: EvalSettings,
    tasks: Sequence[str] = (),
    scorer: Scorer | None = None,
    template: int = 0,
    encode_user: bool | None = None,
    benchmark: str = "instructions",
) -> dict:
    """Zero-shot instruction following (``InstructionExample``): exact match per task cluster (``tasks``: the
    clusters scored, default all; ``settings.limit`` examples each), and rank classification over the options of
    examples that list them. ``encode_user`` None: through the text encoder when the model has one."""
    wanted = list(tasks)
    by_task: dict[str, list] = defaultdict(list)
    for ex in data.examples:
        if (not wanted or ex.task in wanted) and (not settings.limit or len(by_task[ex.task]) < settings.limit):
            by_task[ex.task].append(ex)
    missing = sorted(set(wanted) - set(by_task))
    if missing:
        raise ValueError(
            f"{data.report.source}: no examples of task(s) {missing}; it has {sorted({e.task for e in data})}"
        )
    scorer = scorer or load_scorer(settings)
    encode = scorer.prompts.text is not None if encode_user is None else encode_user
    decode = replace(settings.decode, stop=tuple(CHAT_STOP))
    zero_shot = replace(settings, shots=[0], trials=1, icl_mode="causal", encode_input=False)

    def needs(ex) -> tuple:
        prompt = instruction_prompt(ex, template, encode)
        options = [(prompt, len(scorer.tokenizer.encode(" " + o))) for o in ex.options]
        return ex.id, [(prompt, decode.max_new_tokens), *options]

    examples, report = drop_unusable(
        scorer, data, [ex for task in sorted(by_task) for ex in by_task[task]], needs, zero_shot
    )
    queries = [Query(ex.id, instruction_prompt(ex, template, encode)) for ex in examples]

    def metric(answers: list[str]) -> dict[str, float]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for ex, got in zip(examples, answers, strict=True):
            hits[ex.task].append(normalize_vqa_answer(got) == normalize_vqa_answer(ex.output))
        per_task = {f"exact_match/{t}": sum(h) / len(h) for t, h in sorted(hits.items())}
        return {"exact_match": sum(per_task.values()) / len(per_task), **per_task}

    outcome = answer(scorer, queries, [], zero_shot, decode, metric, "exact_match")
    for row, ex in zip(outcome.predictions, examples, strict=True):
        row.update(task=ex.task, expected=ex.output)
    ranked = [i for i, ex in enumerate(examples) if ex.options]
    if ranked:
        picks = rank_options(scorer, [queries[i] for i in ranked], [list(examples[i].options) for i in ranked])
        hits, chance, gold = defaultdict(list), defaultdict(list), defaultdict(list)
        for i, pick in zip(ranked, picks, strict=True):
            ex = examples[i]
            outcome.predictions[i]["option"] = pick
            hits[ex.task].append(pick == ex.output.strip())
            chance[ex.task].append(1 / len(ex.options))
            gold[ex.task].append(ex.output.strip())
        entry = outcome.results[0]
        for task, h in sorted(hits.items()):
            entry[f"option_accuracy/{task}"] = {"trials": [sum(h) / len(h)], "mean": sum(h) / len(h), "std": 0.0}
            entry[f"option_chance/{task}"] = sum(chance[task]) / len(chance[task])
            # what always giving the cluster's most frequent answer would score here
            entry[f"option_majority/{task}"] = Counter(gold[task]).most_common(1)[0][1] / len(h)
    header = {
        "n": len(examples),
        "tasks": dict(sorted(Counter(ex.task for ex in examples).items())),
        "template": f"[image] User: {{instruction text, template {template}}}\\nAssistant: [answer]",
        "encode_user": encode,
        "decoding": decode.to_dict(),
        "data": report.to_dict(),
        "skipped": dict(report.skipped),
    }
    return finish(settings, benchmark, header, outcome)


def rank_options(scorer: Scorer, queries: Sequence[Query], options: list[list[str]]) -> list[str]:
    """The option each query's prompt gives the highest summed log-probability as the answer."""
    scores = scorer.rank(
        [[(q.prompt, " " + o) for o in opts] for q, opts in zip(queries, options, strict=True)], desc="ranking options"
    )
    return [
        opts[max(range(len(opts)), key=lambda i: row[i].logprob)] for opts, row in zip(options, scores, strict=True)
    ]


def evaluate_world(
    world_dir: str | Path,
    split: str,
    tasks: Sequence[str],
    settings: EvalSettings,
    scorer: Scorer | None = None,
    demo_split: str = "train",
    caption_tokens: int = NEW_TOKENS["caption"],
) -> dict:
    """The bundled world's benchmarks (``tasks`` from ``WORLD_TASKS``) on ``split``, each written beside
    ``settings.out`` (default ``results/world-<split>.json``) as ``<out>-<task>.json``, and a summary of all of
    them at ``settings.out``; demonstrations come from ``demo_split``; captions get ``caption_tokens`` new tokens
    and the scene metric (``eval.scene.scene_naming``)."""
    world = Path(world_dir)
    unknown = sorted(set(tasks) - set(WORLD_TASKS))
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; expected some of {', '.join(WORLD_TASKS)}")
    scorer = scorer or load_scorer(settings)
    out = Path(settings.out) if settings.out else Path("results") / f"world-{split}.json"
    summary: dict = {"checkpoint": str(settings.checkpoint), "split": split, "tasks": {}}
    with_demos = max(settings.shots) > 0 and bool(demo_split)
    on_error = settings.on_error
    for task in tasks:
        task_out = str(out.with_name(f"{out.stem}-{task}.json"))
        sub = replace(settings, out=task_out)
        if task == "captions":
            data = read_world_captions(world, split, on_error=on_error)
            demos = read_world_captions(world, demo_split) if with_demos else None
            sub = replace(sub, decode=replace(settings.decode, max_new_tokens=caption_tokens))
            metric = scene_naming(world, split)
            result = _evaluate_caption("world-captions", data, sub, demos, scorer, f"world-{split}-captions", metric)
        elif task == "vqa":
            data = read_world_vqa(world, split, on_error=on_error)
            demos = read_world_vqa(world, demo_split) if with_demos else None
            result = _evaluate_vqa("world-vqa", data, sub, demos, scorer, f"world-{split}-vqa")
        elif task == "entail":
            data = read_world_entail(world, split, on_error=on_error)
            demos = read_world_entail(world, demo_split) if with_demos else None
            result = _evaluate_classification("world-entail", data, sub, demos, scorer, f"world-{split}-entail")
        else:
            data = read_world_choice(world, split, on_error=on_error)
            demos = read_world_choice(world, demo_split) if with_demos else None
            examples, outcome, report = rank_choices(data, sub, demos, scorer)
            first = examples[0].options[0] if examples else ("", "")
            header = {
                "n": len(examples),
                "template": f"(context, continuation), e.g. {first[0]!r} + {first[1]!r}",
                "data": report.to_dict(),
                "skipped": dict(report.skipped),
            }
            result = finish(sub, f"world-{split}-choice", header, outcome)
        summary["tasks"][task] = {"results": result["results"], "file": task_out}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary of all tasks: {out}")
    return summary
