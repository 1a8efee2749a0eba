"""NLVR2 (is the sentence true of the pair of images?) from the published jsonl and image folders, scored by
ranking "True" / "False" with both images docked, zero-shot or in-context, with calibration.

    python eval/nlvr2.py --checkpoint runs/tiny/final --data nlvr2/dev.json --images nlvr2/images
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import image_classification_parser  # noqa: E402
from eval.settings import EvalSettings  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = image_classification_parser(
        __doc__.split("\n\n")[0],
        data_help="dev.json / test1.json (one json object per line)",
        images_help="image root: <split>/ or the train split's numbered folders",
        demos_help="labeled jsonl for in-context demonstrations (train.json)",
    ).parse_args(argv)
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from data.tasks import read_nlvr2
    from eval.evaluators import evaluate

    data = read_nlvr2(args.data, args.images, on_error=args.on_error)
    demos = read_nlvr2(args.demos, args.images, on_error=args.on_error) if args.demos else None
    return evaluate("nlvr2", data, settings, demos)


if __name__ == "__main__":
    main()
