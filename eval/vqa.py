"""Open-ended visual question answering: VQAv2 and OK-VQA from their published questions and annotations json
(the bundled world's VQA files use the same format), answered by generation and scored with the official VQA
accuracy of the current official evaluation (when the human answers differ, both sides normalised as it does,
otherwise matched exactly; min(#humans that gave the answer / 3, 1) averaged over the 10 leave-one-out subsets of
the human answers; see eval/metrics.py).

    python eval/vqa.py --checkpoint runs/tiny/final --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --images val2014
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import NEW_TOKENS, EvalSettings  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=NEW_TOKENS["vqa"])
    p.add_argument("--benchmark", default="vqav2", help="name in the results (vqav2, okvqa, ...)")
    p.add_argument("--questions", required=True, help="questions json ({'questions': [...], 'data_subtype': ...})")
    p.add_argument("--annotations", default=None, help="annotations json; leave out for a test split")
    p.add_argument("--images", required=True, help="image directory (COCO_<subtype>_<id:012d>.jpg or <subtype>/...)")
    p.add_argument("--image_name", default=None, help="file name template with {image_id} and {subtype}")
    p.add_argument("--demo_questions", default=None, help="questions json to draw in-context demonstrations from")
    p.add_argument("--demo_annotations", default=None)
    p.add_argument("--demo_images", default=None, help="image directory of the demonstrations (default: --images)")
    args = p.parse_args(argv)
    if args.demo_questions and not args.demo_annotations:
        p.error("--demo_questions needs --demo_annotations (demonstrations show their answers)")
    settings = EvalSettings.from_args(args)  # bad values stop here, before any file is read
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from data.tasks import read_vqa
    from eval.evaluators import evaluate

    data = read_vqa(args.questions, args.annotations, args.images, args.image_name, on_error=args.on_error)
    demos = None
    if args.demo_questions:
        images = args.demo_images or args.images
        demos = read_vqa(args.demo_questions, args.demo_annotations, images, args.image_name, on_error=args.on_error)
    return evaluate("vqav2", data, settings, demos, benchmark=args.benchmark)


if __name__ == "__main__":
    main()
