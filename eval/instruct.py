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
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import NEW_TOKENS, EvalSettings  # noqa: E402

ENCODE_USER = {"auto": None, "true": True, "false": False}


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=NEW_TOKENS["instruction"], limit=100)
    p.add_argument("--data", default="data/world/instructions_val.jsonl", help="instruction jsonl")
    p.add_argument("--image_root", default=None, help="folder the image paths are relative to (default: the file's)")
    p.add_argument("--tasks", default="", help="comma-separated task clusters to score (default: all)")
    p.add_argument("--template", type=int, default=0, help="which of data.templates.INSTRUCTION_TEMPLATES")
    p.add_argument(
        "--encode_user",
        choices=tuple(ENCODE_USER),
        default="auto",
        help="read the user's words through the text encoder (auto: when the model has one)",
    )
    p.add_argument("--benchmark", default="instructions", help="name in the results")
    args = p.parse_args(argv)
    if args.shots != "0":
        p.error("--shots: instruction following is scored zero-shot here")
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from data.tasks import read_instructions
    from eval.evaluators import evaluate_instructions

    data = read_instructions(args.data, args.image_root, on_error=args.on_error)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    return evaluate_instructions(
        data,
        settings,
        tasks,
        template=args.template,
        encode_user=ENCODE_USER[args.encode_user],
        benchmark=args.benchmark,
    )


if __name__ == "__main__":
    main()
