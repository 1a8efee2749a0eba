"""How similar is in-context learning to finetuning, layer by layer? Zero-shot, k-shot in-context and finetuned on
the same k demonstrations (key and value projections only, one SGD pass), compared on the same test inputs with
Dai et al.'s Rec2FTP, SimAOU, SimAM and Kendall (definitions in analysis/icl_finetuning.py).

    python analysis/icl_vs_ft.py --checkpoint runs/tiny/final --task world-entail --world data/world --shots 8
    python analysis/icl_vs_ft.py --checkpoint assets/smollm2 --task sst2 --data SST-2/dev.tsv --shots 8 --limit 100

Writes results/icl_vs_ft/<name>.json and <name>.png, and rewrites results/icl_vs_ft/table.md from every JSON there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def parser() -> FlagParser:
    p = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="MetaLM checkpoint or transformers GPT-2 / Llama directory")
    p.add_argument("--task", required=True, help="a text classification task of data/templates.py, e.g. sst2")
    p.add_argument("--world", default=None, help="bundled world directory (for world-entail)")
    p.add_argument("--split", default="val", help="world split the test inputs come from")
    p.add_argument("--demo_split", default="train", help="world split the demonstrations come from")
    p.add_argument("--data", default=None, help="the task's labeled file (e.g. SST-2 dev.tsv): the test inputs")
    p.add_argument(
        "--demos", default=None, help="labeled file to draw demonstrations from; default: --data past the tests"
    )
    p.add_argument("--shots", type=int, default=8, help="k: demonstrations shown in context and finetuned on")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the finetuning pass")
    p.add_argument("--limit", type=int, default=100, help="test inputs: the first N of the test split")
    p.add_argument("--seed", type=int, default=0, help="draws the demonstrations and the random baselines")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/icl_vs_ft", help="results directory")
    p.add_argument("--name", default=None, help="results file stem (default: <task>-<checkpoint directory name>)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    for flag, value, low in (("--shots", args.shots, 1), ("--limit", args.limit, 1)):
        if value < low:
            raise SystemExit(f"{flag} {value}: at least {low}")
    if not args.lr > 0:
        raise SystemExit(f"--lr {args.lr}: expected a positive learning rate")
    if (args.world is None) == (args.data is None):
        raise SystemExit("give --world DIR (world-entail) or --data FILE (GLUE tasks), not both or neither")
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    import json

    from analysis.icl_finetuning import analyse, build_setup, markdown, plot
    from data.tasks import read_glue, read_world_entail
    from eval.lighteval import DecoderLM

    if args.world is not None:
        if args.task != "world-entail":
            raise SystemExit(f"--world reads world-entail; --task {args.task} needs --data")
        data = read_world_entail(args.world, args.split)
        pool = read_world_entail(args.world, args.demo_split).examples
        source = f"{args.world} ({args.split})"
    else:
        data = read_glue(args.data, args.task)
        pool = read_glue(args.demos, args.task).examples if args.demos else data.examples[args.limit :]
        source = args.data
    tests = data.examples[: args.limit]
    setup = build_setup(args.task, tests, pool, args.shots, args.seed, source)
    lm = DecoderLM.load(args.checkpoint, device=args.device, progress=False)
    name = args.name or f"{args.task}-{Path(args.checkpoint).resolve().name}"
    print(f"{name}: {len(tests)} test inputs, k={args.shots}, lr={args.lr}, {len(lm.decoder.blocks)} layers")
    result = {"name": name, "task": args.task, "checkpoint": args.checkpoint, "data": source}
    result |= analyse(lm.decoder, lm.tokenizer.encode, setup, args.lr, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, str(out / f"{name}.png"))
    results = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    (out / "table.md").write_text(markdown(results))
    print(markdown([result]))
    print(f"wrote {out / name}.json, .png and {out / 'table.md'} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
