"""Instruction following: answers generated for (instruction, input, image) examples, scored by exact match per
task cluster after the VQA answer normalisation (case, punctuation, articles, number words). Used to measure
zero-shot transfer to task clusters held out of instruction tuning (``train/instruct.py``).

Examples that list their allowed answers (``options``, FLAN's OPTIONS: yes/no, a count, which scene) show them
in the prompt and are also scored by rank classification, as FLAN scores its classification tasks: the model's
answer is the option it gives the highest log-probability after ``Assistant:``. This measures whether the model
knows the answer apart from whether it writes it in the expected form. Beside it: chance (one over the number of
options) and the majority baseline (always the cluster's most frequent answer).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402


def run(args, scorer=None) -> dict:
    from data.tasks import read_instructions
    from data.templates import CHAT_STOP, instruction_prompt
    from eval.common import Query, answer, finish, load_scorer, settings_from
    from eval.metrics import normalize_vqa_answer

    data = read_instructions(args.data, args.image_root, on_error=args.on_error)
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    by_task: dict[str, list] = defaultdict(list)
    for ex in data.examples:
        if (not wanted or ex.task in wanted) and (not args.limit or len(by_task[ex.task]) < args.limit):
            by_task[ex.task].append(ex)
    missing = sorted(set(wanted) - set(by_task))
    if missing:
        raise ValueError(f"{args.data}: no examples of task(s) {missing}; it has {sorted({e.task for e in data})}")
    examples = [ex for task in sorted(by_task) for ex in by_task[task]]
    scorer = scorer or load_scorer(args)
    encode = {"auto": scorer.prompts.text is not None, "true": True, "false": False}[args.encode_user]

    queries = [Query(ex.id, instruction_prompt(ex, args.template, encode)) for ex in examples]

    def metric(answers: list[str]) -> dict[str, float]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for ex, got in zip(examples, answers, strict=True):
            hits[ex.task].append(normalize_vqa_answer(got) == normalize_vqa_answer(ex.output))
        per_task = {f"exact_match/{t}": sum(h) / len(h) for t, h in sorted(hits.items())}
        return {"exact_match": sum(per_task.values()) / len(per_task), **per_task}

    settings = settings_from(args, CHAT_STOP)
    outcome = answer(scorer, queries, [], [0], 1, args.seed, settings, metric, "exact_match")
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
    header = {"n": len(examples), "tasks": {t: len(v) for t, v in sorted(by_task.items())},
              "template": f"[image] User: {{instruction text, template {args.template}}}\\nAssistant: [answer]",
              "encode_user": encode, "decoding": settings.to_dict(), "data": data.report.to_dict(),
              "skipped": dict(data.report.skipped)}  # fmt: skip
    return finish(args, args.benchmark, header, outcome)


def rank_options(scorer, queries, options: list[list[str]]) -> list[str]:
    """The option each query's prompt gives the highest summed log-probability as the answer."""
    scores = scorer.rank([[(q.prompt, " " + o) for o in opts] for q, opts in zip(queries, options, strict=True)],
                         desc="ranking options")  # fmt: skip
    return [
        opts[max(range(len(opts)), key=lambda i: row[i].logprob)] for opts, row in zip(options, scores, strict=True)
    ]


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=24, limit=100)
    p.add_argument("--data", default="data/world/instructions_val.jsonl", help="instruction jsonl")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the file's)")
    p.add_argument("--tasks", default="", help="comma-separated task clusters to score (default: all)")
    p.add_argument("--template", type=int, default=0, help="which of data.templates.INSTRUCTION_TEMPLATES")
    p.add_argument("--encode-user", choices=("auto", "true", "false"), default="auto",
                   help="read the user's words through the text encoder (auto: when the model has one)")  # fmt: skip
    p.add_argument("--benchmark", default="instructions", help="name in the results")
    args = p.parse_args(argv)
    if args.shots != "0":
        p.error("--shots: instruction following is scored zero-shot here")
    return run(args)


if __name__ == "__main__":
    main()
