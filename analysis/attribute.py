"""Self-attention attribution (Hao et al., AAAI 2021) of a decoder classifying by label words: per-head importance
by integrated gradients over attention maps, accuracy as heads are pruned by attribution, by attention weight and
at random, and one example's attribution graph (``analysis.attribution``).

    python analysis/attribute.py --checkpoint runs/choice/final --task world-choice --data data/world
    python analysis/attribute.py --checkpoint assets/smollm2 --task sst2 --data SST-2/dev.tsv --limit 64
    python analysis/attribute.py --checkpoint assets/smollm2 --task sst2 --data SST-2/dev.tsv \
        --completeness 8,32,128 --layers 0,1,2          # how many steps m the integrated gradients need
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="MetaLM checkpoint or transformers GPT-2 / Llama directory")
    p.add_argument("--task", default="world-choice", help="world-choice, world-entail, or a GLUE text task (sst2, ...)")
    p.add_argument("--data", default="data/world", help="the world directory (world tasks) or the task's tsv")
    p.add_argument("--split", default="val", help="world split (world tasks only)")
    p.add_argument("--limit", type=int, default=200, help="examples to evaluate pruning on (0: all)")
    p.add_argument("--n_importance", type=int, default=24, help="examples head importance is averaged over")
    p.add_argument("--steps", type=int, default=20, help="Riemann steps m of the integrated gradients")
    p.add_argument("--rule", default="right", choices=("right", "left", "midpoint"), help="Riemann points")
    p.add_argument("--target", default="gold", choices=("gold", "pred"), help="label whose probability is F")
    p.add_argument("--random_orders", type=int, default=3, help="random pruning orders averaged")
    p.add_argument("--example", type=int, default=0, help="index of the example whose graph is drawn")
    p.add_argument("--threshold", type=float, default=0.4, help="graph edges: share of the layer's largest")
    p.add_argument("--batch", type=int, default=0, help="scaled copies per forward (0: all m at once)")
    p.add_argument(
        "--completeness",
        default="",
        help="only check how many steps m the model needs: comma-separated m (e.g. 8,32,128), the gap per layer of "
        "--layers for --example, written to NAME-completeness.json/.md",
    )
    p.add_argument("--layers", default="", help="with --completeness: comma-separated layers (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out_dir", default="results/attribution")
    p.add_argument("--name", default=None, help="file stem of the outputs (default: the task)")
    args = p.parse_args(argv)
    for flag in ("limit", "n_importance", "steps", "random_orders", "batch"):
        if getattr(args, flag) < 0 or (flag == "steps" and args.steps < 1):
            p.error(f"--{flag} {getattr(args, flag)}: must be {'at least 1' if flag == 'steps' else 'non-negative'}")
    import torch

    from analysis.attribution import read_items, run_study, write_results
    from eval.scoring import load_decoder

    torch.manual_seed(0)
    start = time.perf_counter()
    decoder, tokenizer = load_decoder(args.checkpoint, args.device)
    items, verbalizers = read_items(args.task, args.data, tokenizer.encode, args.split, args.limit)
    name = args.name or args.task
    if args.completeness:
        return check_steps(args, decoder, tokenizer, items, verbalizers, name, start, argv)
    result = run_study(
        decoder,
        tokenizer,
        items,
        verbalizers,
        args.n_importance,
        args.steps,
        args.rule,
        args.target,
        args.random_orders,
        args.example,
        args.threshold,
        args.batch,
    )
    result["command"] = " ".join(["python", "analysis/attribute.py", *(argv if argv is not None else sys.argv[1:])])
    result["checkpoint"] = str(args.checkpoint)
    result["task"] = args.task
    result["seconds"]["total"] = round(time.perf_counter() - start, 1)
    ckpt = Path(args.checkpoint)
    model = f"{ckpt.parent.name}/{ckpt.name}" if ckpt.name == "final" else ckpt.name
    for path in write_results(result, args.out_dir, name, f"{args.task} ({model})"):
        print(path)
    print(Path(args.out_dir, f"{name}.md").read_text())
    return result


def check_steps(args, decoder, tokenizer, items, verbalizers, name, start, argv) -> dict:
    """``--completeness``: the example's completeness gap per layer and m, as JSON and a table."""
    import json

    from analysis.attribution import completeness_by_steps, completeness_markdown, label_token_ids

    try:
        steps = [int(m) for m in args.completeness.split(",") if m.strip()]
        layers = [int(i) for i in args.layers.split(",") if i.strip()] or list(range(len(decoder.blocks)))
    except ValueError as err:
        raise SystemExit(f"--completeness / --layers: comma-separated integers expected ({err})") from err
    if not steps or min(steps) < 1:
        raise SystemExit(f"--completeness {args.completeness}: give steps m >= 1, e.g. 8,32,128")
    if not 0 <= args.example < len(items):
        raise SystemExit(f"--example {args.example}: there are {len(items)} examples")
    label_ids = label_token_ids(tokenizer.encode, verbalizers) if verbalizers else None
    result = completeness_by_steps(decoder, items[args.example], label_ids, layers, steps, args.rule, args.batch or 32)
    result["command"] = " ".join(["python", "analysis/attribute.py", *(argv if argv is not None else sys.argv[1:])])
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-completeness.json").write_text(json.dumps(result, indent=1) + "\n")
    table = completeness_markdown(result, f"{args.task} ({Path(args.checkpoint).name})")
    (out / f"{name}-completeness.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
