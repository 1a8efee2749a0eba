"""Mean ± std over seeds of pretraining's headline figures, read from each run's ``summary.json``.

Fifty greedy captions swing by several points between runs that differ only in their seed (or in the CPU's
kernels), so the README reports these figures over seeds, with one run's printout as the example:

    for seed in 0 1 2; do
        torchrun --standalone --nproc_per_node=1 train/pretrain.py --seed $seed --out runs/seed-$seed
    done
    python eval/seeds.py runs/seed-0 runs/seed-1 runs/seed-2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402
from eval.metrics import mean_std  # noqa: E402
from metalm.io import read_json  # noqa: E402

FIGURES = {
    "training loss (last step)": ("last_loss",),
    "validation loss (nats/token)": ("val_loss",),
    "held-out captions naming the right shapes": ("heldout_captions", "shapes_named"),
    "held-out captions naming the right colours": ("heldout_captions", "colors_named"),
    "held-out captions naming the unseen pair": ("heldout_captions", "unseen_pair_named"),
    "validation captions naming the right shapes": ("val_captions", "shapes_named"),
    "validation captions naming the right colours": ("val_captions", "colors_named"),
}
"""The figures reported, each a path of keys into ``summary.json``."""


def figure(summary: dict, keys: tuple[str, ...], source: Path) -> float:
    """One figure of a run's summary; a missing key names the file (a run that stopped early has none)."""
    value = summary
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"{source}: no {'.'.join(keys)}; expected the summary of a finished pretraining run")
        value = value[key]
    return float(value)


def over_seeds(runs: list[Path]) -> dict[str, dict]:
    """Per figure: each run's value (in ``runs`` order), their mean and population standard deviation."""
    summaries = [(run / "summary.json", read_json(run / "summary.json", "a pretraining run's summary")) for run in runs]
    table = {}
    for name, keys in FIGURES.items():
        values = [figure(summary, keys, source) for source, summary in summaries]
        mean, std = mean_std(values)
        table[name] = {"runs": values, "mean": mean, "std": std}
    return table


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (--out of train/pretrain.py)")
    p.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = p.parse_args(argv)
    table = over_seeds(args.runs)
    print(f"over {len(args.runs)} runs ({', '.join(str(r) for r in args.runs)}): mean ± std (each run)")
    for name, row in table.items():
        runs = ", ".join(f"{v:.3f}" for v in row["runs"])
        print(f"  {name:45s} {row['mean']:.3f} ± {row['std']:.3f}   ({runs})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": [str(r) for r in args.runs], "figures": table}, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
