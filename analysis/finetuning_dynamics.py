"""Finetuning dynamics (Hao et al., AACL 2020): per layer and head, the Jensen-Shannon divergence between the
attention before and after finetuning; per layer, the SVCCA distance between the hidden states before and after;
their consistency across seeds; heatmaps.

    python analysis/finetuning_dynamics.py --seeds 0,1,2 --out results/dynamics

Without ``--init_from`` a small decoder is first pretrained on the bundled world's corpus (saved at
``--pretrained_dir`` and reused from there); it is then finetuned on world-entail once per seed. Writes
``dynamics.json``, ``dynamics.md`` and ``dynamics.png`` under ``--out``. The library is ``analysis.dynamics``.
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
    p.add_argument("--seeds", default="0,1,2", help="comma-separated finetuning seeds (data order)")
    p.add_argument("--steps", type=int, default=150, help="finetuning steps per seed")
    p.add_argument("--lr", type=float, default=5e-4, help="finetuning peak learning rate")
    p.add_argument("--n_train", type=int, default=2000, help="training examples used")
    p.add_argument("--n_probe", type=int, default=64, help="held-out examples the attention and states are read on")
    p.add_argument("--keep", type=float, default=0.99, help="share of variance the SVD step of SVCCA keeps")
    p.add_argument("--out", default="results/dynamics", help="output directory")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds: give at least one seed, e.g. 0,1,2")
    import json
    import time

    from analysis import dynamics
    from metalm import MetaLM

    start = time.time()
    dynamics.seeded(0)
    setup = dynamics.world_setup(args.world, n_train=args.n_train)
    if args.init_from:
        model = MetaLM.from_pretrained(args.init_from).eval()
    else:
        model = dynamics.pretrained_decoder(setup, args.world, args.pretrained_dir, args.pretrain_steps)
    result = dynamics.dynamics_experiment(setup, model, seeds, args.steps, args.lr, args.n_probe, args.keep)
    result["config"] = vars(args)
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "dynamics.md").write_text(dynamics.markdown(result))
    dynamics.plot(result, out / "dynamics.png")
    print(dynamics.markdown(result))
    print(f"wrote {out}/dynamics.json, dynamics.md, dynamics.png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
