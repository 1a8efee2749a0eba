"""Multiple-choice benchmarks (HellaSwag, PIQA, COPA, StoryCloze, Winogrande, ARC-Easy/Challenge, BoolQ, and the
bundled world's choice set) from their published files: each option is scored by the log-probability of its
continuation given its context (templates as in lm-evaluation-harness; see ``data.tasks``), zero-shot or with
in-context demonstrations; ``acc`` ranks by the summed log-probability, ``acc_norm`` by the mean per token.
``--scoring lighteval`` scores zero-shot as lighteval does instead (the decoder alone, ``acc_norm`` per character
without the leading space, ``--chat_template`` for an instruct model; see ``eval/lighteval.py``), so the numbers
stand beside a model card's; ``--checkpoint`` may then also be a transformers decoder directory.

    python eval/multiple_choice.py --checkpoint runs/tiny/final --task piqa --data valid.jsonl \\
        --labels valid-labels.lst --shots 0,1
    python eval/multiple_choice.py --checkpoint assets/smollm2 --task arc-easy --data ARC-Easy-Test.jsonl \\
        --scoring lighteval --chat_template --dtype bfloat16 --batch_size 64
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import DTYPES, SCORINGS, EvalSettings  # noqa: E402

TASKS = ("hellaswag", "piqa", "copa", "storycloze", "winogrande", "arc-easy", "arc-challenge", "boolq", "world-choice")


def read(task: str, path: str, labels: str | None, on_error: str):
    """The task's examples (``TaskData`` of ``ChoiceExample``) read by its registry reader (the world's choice set
    from its jsonl file)."""
    from data.tasks import get_task, read_choice_jsonl, read_piqa  # loads torch: imported after parsing (main)

    if task == "piqa":
        return read_piqa(path, labels, on_error=on_error)
    if labels:
        raise ValueError(f"--labels is only for piqa (its labels come in a separate .lst file), not {task}")
    reader = read_choice_jsonl if task == "world-choice" else get_task(task).reader
    return reader(path, on_error=on_error)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, help="the task's evaluation file (jsonl, or csv for StoryCloze)")
    p.add_argument("--labels", default=None, help="PIQA only: the -labels.lst file beside the jsonl")
    p.add_argument("--demos", default=None, help="labeled file of the same format for in-context demonstrations")
    p.add_argument("--demo_labels", default=None, help="PIQA only: labels of the --demos file")
    p.add_argument(
        "--scoring",
        choices=SCORINGS,
        default="harness",
        help="harness: lm-evaluation-harness style (acc, acc_norm per token; MetaLM checkpoints, prompts with "
        "demonstrations); lighteval: zero-shot as lighteval scores it (acc_norm per character without the leading "
        "space, the decoder alone; a MetaLM checkpoint or a transformers decoder directory)",
    )
    p.add_argument(
        "--chat_template",
        action="store_true",
        help="--scoring lighteval: wrap the query in the model's chat template (lighteval's --use_chat_template, "
        "how an instruct model's card is scored)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="--scoring lighteval: the decoder's weights and activations (bfloat16 is what SmolLM2's card used, "
        "and several times faster on a CPU with bf16 instructions)",
    )
    args = p.parse_args(argv)
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    if settings.chat_template and settings.scoring != "lighteval":
        p.error("--chat_template goes with --scoring lighteval")
    if settings.dtype != "float32" and settings.scoring != "lighteval":
        p.error("--dtype goes with --scoring lighteval")
    if settings.scoring == "lighteval" and args.demos:
        p.error("--scoring lighteval is zero-shot: no --demos")
    from eval.evaluators import evaluate

    data = read(args.task, args.data, args.labels, args.on_error)
    if settings.scoring == "lighteval":
        from eval.lighteval import evaluate_choice

        return evaluate_choice(args.task, data, settings)
    demos = read(args.task, args.demos, args.demo_labels, args.on_error) if args.demos else None
    return evaluate(args.task, data, settings, demos)


if __name__ == "__main__":
    main()
