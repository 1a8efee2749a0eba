"""SNLI-VE visual entailment (does the image entail, contradict or leave open the hypothesis?) from the published
jsonl and the Flickr30k images, scored by ranking label words, zero-shot or in-context, with calibration.

    python eval/snli_ve.py --checkpoint runs/tiny/final --data snli_ve_dev.jsonl --images flickr30k_images
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
        data_help="snli_ve_{dev,test}.jsonl",
        images_help="directory of the Flickr30k images (<Flickr30K_ID>.jpg)",
        demos_help="labeled jsonl for in-context demonstrations (snli_ve_train.jsonl)",
    ).parse_args(argv)
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from data.tasks import read_snli_ve
    from eval.evaluators import evaluate

    data = read_snli_ve(args.data, args.images, on_error=args.on_error)
    demos = read_snli_ve(args.demos, args.images, on_error=args.on_error) if args.demos else None
    return evaluate("snli-ve", data, settings, demos)


if __name__ == "__main__":
    main()
