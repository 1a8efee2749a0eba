"""Image captioning: COCO, Flickr30k and NoCaps from their published caption files (COCO captions json, Karpathy
split json, or Flickr30k's results_20130124.token), captions generated from the image alone and scored with
CIDEr-D and BLEU-4 as the COCO caption evaluation computes them (on a pure-Python approximation of its PTB
tokenizer; see eval/metrics.py).

    python eval/caption.py --checkpoint runs/tiny/final --format coco --captions captions_val2014.json \\
        --images val2014 --benchmark coco
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import NEW_TOKENS, EvalSettings  # noqa: E402

FORMATS = {"coco": "coco", "karpathy": "coco-karpathy", "flickr30k-tokens": "flickr30k-tokens"}
"""Caption file formats and the ``data.tasks`` registry entry whose reader reads each."""


def read(fmt: str, path: str, images: str, split: str, on_error: str):
    """``TaskData`` of ``CaptionExample`` from a caption file in one of ``FORMATS``."""
    from data.tasks import get_task  # loads torch: imported after parsing, as in main

    reader = get_task(FORMATS[fmt]).reader
    if fmt == "karpathy":
        return reader(path, images, split, on_error=on_error)
    return reader(path, images, on_error=on_error)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=NEW_TOKENS["caption"])
    p.add_argument("--benchmark", default="coco", help="name in the results (coco, flickr30k, nocaps, ...)")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="coco",
        help="coco: captions json (also NoCaps); karpathy: dataset_*.json; flickr30k-tokens: results_20130124.token",
    )
    p.add_argument("--captions", required=True, help="the caption file")
    p.add_argument("--images", required=True, help="image directory")
    p.add_argument("--split", default="test", help="Karpathy split to evaluate (test, val)")
    p.add_argument("--demos", default=None, help="caption file (same format) to draw demonstrations from")
    p.add_argument("--demo_images", default=None, help="image directory of the demonstrations (default: --images)")
    p.add_argument("--demo_split", default="train", help="Karpathy split of the demonstrations")
    args = p.parse_args(argv)
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from eval.evaluators import evaluate

    data = read(args.format, args.captions, args.images, args.split, args.on_error)
    demos = None
    if args.demos:
        demos = read(args.format, args.demos, args.demo_images or args.images, args.demo_split, args.on_error)
    return evaluate(FORMATS[args.format], data, settings, demos, benchmark=args.benchmark)


if __name__ == "__main__":
    main()
