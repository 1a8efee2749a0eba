"""Multiple-choice benchmarks (HellaSwag, PIQA, COPA, StoryCloze, Winogrande, ARC-Easy/Challenge, BoolQ, and the
bundled world's choice set) from their published files: each option is scored by the log-probability of its
continuation given its context (templates as in lm-evaluation-harness; see ``data.tasks``), zero-shot or with
in-context demonstrations; ``acc`` ranks by the summed log-probability, ``acc_norm`` by the mean per token.

    python eval/multiple_choice.py --checkpoint runs/tiny/final --task piqa --data valid.jsonl \\
        --labels valid-labels.lst --shots 0,1
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402

READERS = {
    "hellaswag": "read_hellaswag", "piqa": "read_piqa", "copa": "read_copa", "storycloze": "read_storycloze",
    "winogrande": "read_winogrande", "arc-easy": "read_arc", "arc-challenge": "read_arc", "boolq": "read_boolq",
    "world-choice": "read_choice_jsonl",
}  # fmt: skip


def read(task: str, path: str, labels: str | None, on_error: str):
    """The task's examples (``TaskData`` of ``ChoiceExample``) read by its ``data.tasks`` reader."""
    from data import tasks

    if task == "piqa":
        return tasks.read_piqa(path, labels, on_error=on_error)
    if labels:
        raise ValueError(f"--labels is only for piqa (its labels come in a separate .lst file), not {task}")
    return getattr(tasks, READERS[task])(path, on_error=on_error)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=tuple(READERS))
    p.add_argument("--data", required=True, help="the task's evaluation file (jsonl, or csv for StoryCloze)")
    p.add_argument("--labels", default=None, help="PIQA only: the -labels.lst file beside the jsonl")
    p.add_argument("--demos", default=None, help="labeled file of the same format for in-context demonstrations")
    p.add_argument("--demo-labels", default=None, help="PIQA only: labels of the --demos file")
    args = p.parse_args(argv)
    from eval.common import choose, finish, limited, load_scorer, needs_pool
    from eval.icl import Demo, shots_list

    data = read(args.task, args.data, args.labels, args.on_error)
    examples = limited(data.examples, args.limit)
    missing = [ex.id for ex in examples if ex.label is None]
    if missing:
        raise ValueError(f"{args.data}: examples {missing[:5]} have no label; accuracy needs a labeled split")
    pool = []
    if args.demos:
        demo_data = read(args.task, args.demos, args.demo_labels, args.on_error)
        pool = [Demo(ex.options[ex.label][0], ex.options[ex.label][1], ("demo", ex.id))
                for ex in demo_data.examples if ex.label is not None]  # fmt: skip
    needs_pool(args, pool)
    outcome = choose(load_scorer(args), [(ex.id, ex.options) for ex in examples], [ex.label for ex in examples], pool,
                     shots_list(args.shots), args.trials, args.seed, args.icl_mode, args.encode_input)  # fmt: skip
    first = examples[0].options[0] if examples else ("", "")
    template = f"each option is (context, continuation), e.g. {first[0]!r} + {first[1]!r} (see data/tasks.py)"
    header = {"task": args.task, "n": len(examples), "template": template, "data": data.report.to_dict(),
              "skipped": dict(data.report.skipped)}  # fmt: skip
    return finish(args, args.task, header, outcome)


if __name__ == "__main__":
    main()
