"""The bundled world's benchmarks in one command: captioning (CIDEr-D, BLEU-4, and whether a caption names the
scene's shapes and colours), VQA (official VQA accuracy), entailment (label ranking with calibration) and
multiple choice, on any split; ``--split heldout`` is zero-shot on colour-shape pairs never seen in training.

    python eval/world.py --checkpoint runs/tiny/final --split val --shots 0,1,4
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402

TASKS = ("captions", "vqa", "entail", "choice")


def run(args: argparse.Namespace, scorer=None) -> dict:
    from data import tasks
    from eval import caption, vqa
    from eval.common import choose, classification, finish, limited, load_scorer, needs_pool
    from eval.icl import Demo, shots_list
    from eval.scene import scene_naming

    world, split = Path(args.world), args.split
    scorer = scorer or load_scorer(args)
    out = Path(args.out) if args.out else Path("results") / f"world-{split}.json"
    summary: dict = {"checkpoint": str(args.checkpoint), "split": split, "tasks": {}}
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; expected some of {', '.join(TASKS)}")
    demo_split = args.demo_split if max(shots_list(args.shots)) > 0 else None

    def sub(task: str) -> argparse.Namespace:
        a = copy.copy(args)
        a.out = str(out.with_name(f"{out.stem}-{task}.json"))
        return a

    for task in wanted:
        a = sub(task)
        if task == "captions":
            data = tasks.read_world_captions(world, split, on_error=args.on_error)
            demos = tasks.read_world_captions(world, demo_split) if demo_split else None
            a.max_new_tokens = args.caption_tokens
            result = caption.run(a, data, demos, scorer, f"world-{split}-captions", scene_naming(world, split))
        elif task == "vqa":
            data = tasks.read_world_vqa(world, split, on_error=args.on_error)
            demos = tasks.read_world_vqa(world, demo_split) if demo_split else None
            result = vqa.run(a, data, demos, scorer, f"world-{split}-vqa")
        elif task == "entail":
            data = tasks.read_world_entail(world, split, on_error=args.on_error)
            demos = tasks.read_world_entail(world, demo_split) if demo_split else None
            header, outcome = classification(a, "world-entail", data, demos, scorer)
            result = finish(a, f"world-{split}-entail", header, outcome)
        else:
            data = tasks.read_world_choice(world, split, on_error=args.on_error)
            examples = limited(data.examples, args.limit)
            pool = []
            if demo_split:
                pool = [Demo(ex.options[ex.label][0], ex.options[ex.label][1], ("demo", ex.id))
                        for ex in tasks.read_world_choice(world, demo_split).examples]  # fmt: skip
            needs_pool(a, pool)
            labels = [ex.label for ex in examples]
            outcome = choose(scorer, [(ex.id, ex.options) for ex in examples], labels, pool, shots_list(args.shots),
                             args.trials, args.seed, args.icl_mode, args.encode_input)  # fmt: skip
            first = examples[0].options[0]
            header = {"n": len(examples), "template": f"(context, continuation), e.g. {first[0]!r} + {first[1]!r}",
                      "data": data.report.to_dict(), "skipped": dict(data.report.skipped)}  # fmt: skip
            result = finish(a, f"world-{split}-choice", header, outcome)
        summary["tasks"][task] = {"results": result["results"], "file": a.out}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary of all tasks: {out}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True, classification=True)
    p.set_defaults(max_new_tokens=8, limit=200)
    p.add_argument("--world", default="data/world", help="the generated world (python -m data.world)")
    p.add_argument("--split", default="val", help="val, test, or heldout (unseen colour-shape pairs)")
    p.add_argument("--demo-split", default="train", help="split the in-context demonstrations come from")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--caption-tokens", type=int, default=24, help="max new tokens for captions")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
