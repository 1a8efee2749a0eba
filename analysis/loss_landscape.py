"""Loss landscapes of finetuning (Hao et al., EMNLP 2019; filter normalisation of Li et al. 2018): the 1-D path
from the initialisation to the finetuned weights, the 2-D surface around the finetuned weights along two
filter-normalised random directions, and the optimisation trajectory on its PCA plane, for the same finetuning
started from pretrained and from random weights; contour plots.

    python analysis/loss_landscape.py --out results/landscape

Without ``--init_from`` a small decoder is first pretrained on the bundled world's corpus (saved at
``--pretrained_dir`` and reused from there); both starts are finetuned on world-entail. Writes ``landscape.json``,
``landscape.md``, ``interpolation.png``, ``surface.png`` and ``trajectory.png`` under ``--out``. The library is
``analysis.landscape``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def parser() -> FlagParser:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="data/world", help="the bundled world (generated there when missing)")
    p.add_argument(
        "--init_from", default="", help="a MetaLM checkpoint to finetune (default: the world-pretrained one)"
    )
    p.add_argument("--pretrained_dir", default="runs/world-lm-tiny", help="where the world-pretrained decoder is kept")
    p.add_argument("--pretrain_steps", type=int, default=400, help="language-modelling steps when it is made")
    p.add_argument("--seed", type=int, default=0, help="finetuning seed (data order; the random start's init)")
    p.add_argument("--steps", type=int, default=150, help="finetuning steps")
    p.add_argument("--lr", type=float, default=5e-4, help="finetuning peak learning rate")
    p.add_argument("--every", type=int, default=10, help="steps between the trajectory's snapshots")
    p.add_argument("--n_train", type=int, default=2000, help="training examples used")
    p.add_argument("--n_loss", type=int, default=64, help="examples the landscape's loss is measured on")
    p.add_argument("--grid", type=int, default=15, help="points per axis of the 2-D surfaces")
    p.add_argument("--span", type=float, default=1.0, help="the 2-D surface covers [-span, span] on each direction")
    p.add_argument("--out", default="results/landscape", help="output directory")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    import json
    import time

    from analysis import dynamics, landscape
    from metalm import MetaLM

    start = time.time()
    dynamics.seeded(0)
    setup = dynamics.world_setup(args.world, n_train=args.n_train)
    if args.init_from:
        model = MetaLM.from_pretrained(args.init_from).eval()
    else:
        model = dynamics.pretrained_decoder(setup, args.world, args.pretrained_dir, args.pretrain_steps)
    result = landscape.landscape_experiment(
        setup, model, args.seed, args.steps, args.lr, args.every, args.grid, args.span, args.n_loss
    )
    result["config"] = vars(args)
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "landscape.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "landscape.md").write_text(landscape.markdown(result))
    landscape.plot(result, out)
    print(landscape.markdown(result))
    print(f"wrote {out}/landscape.json, landscape.md and the plots ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
