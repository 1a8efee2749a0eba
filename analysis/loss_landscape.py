"""Loss landscapes of finetuning (Hao et al., EMNLP 2019; filter normalisation of Li et al. 2018): the 1-D path
from the initialisation to the finetuned weights, the 2-D surface around the finetuned weights along two
filter-normalised random directions, and the optimisation trajectory on its PCA plane, for the same finetuning
started from pretrained and from random weights; contour plots.

    python analysis/loss_landscape.py --out results/landscape

Without ``--init_from`` a small decoder is first pretrained on the bundled world's corpus (saved at
``--pretrained_dir`` and reused from there); both starts are finetuned on world-entail. Writes ``landscape.json``,
``landscape.md``, ``interpolation.png``, ``surface.png`` and ``trajectory.png`` under ``--out``. The library is
``analysis.landscape``.

With ``--runs`` it finetunes nothing and draws runs ``train/finetune.py`` already wrote, one per directory (named
by it), each with checkpoints every few steps (``--ckpt_every 5 --keep_last 10``) for the trajectory; a
from-scratch control is the same command with ``--init_weights random``. The real SmolLM2 on SST-2:

    python analysis/loss_landscape.py --runs runs/landscape/pretrained runs/landscape/scratch \
        --grid 7 --span 0.2 --n_loss 32 --n_alphas 9 --out results/landscape/smollm2-sst2
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="finetuning seed (data order; the random start's init)")
    p.add_argument("--every", type=int, default=20, help="steps between the trajectory's snapshots")
    p.add_argument("--n_loss", type=int, default=64, help="examples the landscape's loss is measured on")
    p.add_argument("--grid", type=int, default=13, help="points per axis of the 2-D surfaces")
    p.add_argument("--span", type=float, default=1.0, help="the 2-D surface covers [-span, span] on each direction")
    p.add_argument("--n_alphas", type=int, default=21, help="points of the 1-D path from -0.5 to 1.5 (4k + 1)")
    p.add_argument(
        "--runs",
        nargs="+",
        default=[],
        help="draw these train/finetune.py run directories (checkpoints every few steps) instead of finetuning here",
    )
    p.add_argument("--out", default="results/landscape", help="output directory")
    # the shared flags live in the library, so --help waits for torch to load (seconds)
    from analysis import dynamics, landscape

    dynamics.add_setup_flags(p)
    args = p.parse_args(argv)
    import time

    start = time.time()
    if args.runs:
        result = landscape.checkpoint_landscape(args.runs, args.grid, args.span, args.n_loss, args.n_alphas)
    else:
        setup, model, schedule = dynamics.from_flags(args, every=args.every)
        result = landscape.landscape_experiment(
            setup, model, args.seed, schedule, args.grid, args.span, args.n_loss, args.n_alphas
        )
    result |= {"config": vars(args), "seconds": round(time.time() - start, 1)}
    out = dynamics.write_report(args.out, "landscape", result, landscape.markdown(result))
    landscape.plot(result, out)
    print(f"wrote {out}/landscape.json, landscape.md and the plots ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
