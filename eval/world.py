"""The bundled world's benchmarks in one command: captioning (CIDEr-D, BLEU-4, and whether a caption names the
scene's shapes and colours), VQA (official VQA accuracy), entailment (label ranking with calibration) and
multiple choice, on any split; ``--split heldout`` is zero-shot on colour-shape pairs never seen in training.

    python eval/world.py --checkpoint runs/tiny/final --split val --shots 0,1,4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402
from eval.settings import NEW_TOKENS, WORLD_TASKS, EvalSettings  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True, classification=True)
    p.set_defaults(max_new_tokens=NEW_TOKENS["vqa"], limit=200)
    p.add_argument("--world", default="data/world", help="the generated world (python -m data.world)")
    p.add_argument("--split", default="val", help="val, test, or heldout (unseen colour-shape pairs)")
    p.add_argument("--demo_split", default="train", help="split the in-context demonstrations come from")
    p.add_argument("--tasks", default=",".join(WORLD_TASKS), help=f"comma-separated, from {', '.join(WORLD_TASKS)}")
    p.add_argument("--caption_tokens", type=int, default=NEW_TOKENS["caption"], help="max new tokens for captions")
    args = p.parse_args(argv)
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from eval.evaluators import evaluate_world

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    settings = EvalSettings.from_args(args)
    return evaluate_world(args.world, args.split, tasks, settings, None, args.demo_split, args.caption_tokens)


if __name__ == "__main__":
    main()
