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

STOP = ("\n",)
FORMATS = ("coco", "karpathy", "flickr30k-tokens")


def read(fmt: str, path: str, images: str, split: str, on_error: str):
    """``TaskData`` of ``CaptionExample`` from a caption file in one of ``FORMATS``."""
    from data.tasks import read_coco_captions, read_flickr30k_tokens, read_karpathy

    if fmt == "coco":
        return read_coco_captions(path, images, on_error=on_error)
    if fmt == "karpathy":
        return read_karpathy(path, images, split, on_error=on_error)
    return read_flickr30k_tokens(path, images, on_error=on_error)


def run(args, data, demo_data=None, scorer=None, benchmark: str = "captions", extra_metric=None) -> dict:
    """Caption every image of ``data`` (``TaskData`` of ``CaptionExample``); CIDEr-D and BLEU-1..4, plus
    ``extra_metric(ids, captions) -> {name: value}`` when given."""
    from data.templates import caption_prompt
    from eval.common import Query, answer, finish, limited, load_scorer, needs_pool, settings_from
    from eval.icl import Demo, shots_list
    from eval.metrics import bleu, cider_d

    examples = limited(data.examples, args.limit)
    pool = [Demo(caption_prompt(ex.image), ex.references[0], ("demo", ex.image_id))
            for ex in (demo_data.examples if demo_data is not None else []) if ex.references]  # fmt: skip
    needs_pool(args, pool)
    ids = [ex.image_id for ex in examples]
    refs = {ex.image_id: ex.references for ex in examples}

    def metric(captions: list[str]) -> dict[str, float]:
        preds = dict(zip(ids, captions, strict=True))
        extra = extra_metric(ids, captions) if extra_metric is not None else {}
        return {"cider_d": cider_d(preds, refs), **bleu(preds, refs), **extra}

    settings = settings_from(args, STOP)
    queries = [Query(ex.image_id, caption_prompt(ex.image)) for ex in examples]
    outcome = answer(scorer or load_scorer(args), queries, pool, shots_list(args.shots), args.trials, args.seed,
                     settings, metric, "cider_d", args.icl_mode, args.encode_input)  # fmt: skip
    header = {"n": len(examples), "template": "<image> [caption]", "decoding": settings.to_dict(),
              "tokenization": "PTB-like, lower-cased, punctuation removed (eval/metrics.py)",
              "data": data.report.to_dict(), "skipped": dict(data.report.skipped)}  # fmt: skip
    return finish(args, benchmark, header, outcome)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=24)
    p.add_argument("--benchmark", default="coco", help="name in the results (coco, flickr30k, nocaps, ...)")
    p.add_argument("--format", choices=FORMATS, default="coco",
                   help="coco: captions json (also NoCaps); karpathy: dataset_*.json; flickr30k-tokens: "
                   "results_20130124.token")  # fmt: skip
    p.add_argument("--captions", required=True, help="the caption file")
    p.add_argument("--images", required=True, help="image directory")
    p.add_argument("--split", default="test", help="Karpathy split to evaluate (test, val)")
    p.add_argument("--demos", default=None, help="caption file (same format) to draw demonstrations from")
    p.add_argument("--demo-images", default=None, help="image directory of the demonstrations (default: --images)")
    p.add_argument("--demo-split", default="train", help="Karpathy split of the demonstrations")
    args = p.parse_args(argv)
    data = read(args.format, args.captions, args.images, args.split, args.on_error)
    demos = None
    if args.demos:
        demos = read(args.format, args.demos, args.demo_images or args.images, args.demo_split, args.on_error)
    return run(args, data, demos, benchmark=args.benchmark)


if __name__ == "__main__":
    main()
