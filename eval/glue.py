"""GLUE-style classification (SST-2, MNLI, RTE, QNLI, MRPC, QQP, CoLA, WNLI, and the bundled world's entailment
set) from the published tsv files, scored by ranking label words, zero-shot or in-context, with calibration.

    python eval/glue.py --checkpoint runs/tiny/final --task rte --data RTE/dev.tsv --demos RTE/train.tsv \\
        --shots 0,1,4 --calibration contextual
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import EvalSettings  # noqa: E402

TASKS = ("sst2", "mnli", "mnli-mm", "rte", "qnli", "mrpc", "qqp", "cola", "wnli", "world-entail")


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], classification=True)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, help="the task's tsv (e.g. dev.tsv, dev_matched.tsv)")
    p.add_argument("--demos", default=None, help="labeled tsv to draw in-context demonstrations from (train.tsv)")
    args = p.parse_args(argv)
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from data.tasks import read_glue
    from eval.evaluators import evaluate

    data = read_glue(args.data, args.task, on_error=args.on_error)
    demos = read_glue(args.demos, args.task, on_error=args.on_error) if args.demos else None
    return evaluate(args.task, data, settings, demos, benchmark=f"glue-{args.task}")


if __name__ == "__main__":
    main()
