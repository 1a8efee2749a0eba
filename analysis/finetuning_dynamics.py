"""Finetuning dynamics (Hao et al., AACL 2020): per layer and head, the Jensen-Shannon divergence between the
attention before and after finetuning; per layer, the SVCCA distance between the hidden states before and after;
their consistency across seeds; heatmaps.

    python analysis/finetuning_dynamics.py --seeds 0,1,2 --out results/dynamics

Without ``--init_from`` a small decoder is first pretrained on the bundled world's corpus (saved at
``--pretrained_dir`` and reused from there); it is then finetuned on world-entail once per seed. Writes
``dynamics.json``, ``dynamics.md`` and ``dynamics.png`` under ``--out``. The library is ``analysis.dynamics``.

With ``--before`` and ``--after`` it finetunes nothing and compares checkpoints a finetuning job already wrote
(e.g. the real SmolLM2 and its ``train/finetune.py`` runs on SST-2, one per seed), read on the first ``--n_probe``
inputs of ``--data`` rendered with ``--task``'s template:

    python analysis/finetuning_dynamics.py --before runs/claims/smollm2-alone --task sst2 \
        --data runs/claims/sst2/heldout.tsv --after runs/claims/ft/smollm2-unfrozen-s{0,1,2}/final \
        --out results/dynamics/smollm2-sst2
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated finetuning seeds (data order)")
    p.add_argument("--n_probe", type=int, default=64, help="held-out examples the attention and states are read on")
    p.add_argument("--keep", type=float, default=0.99, help="share of variance the SVD step of SVCCA keeps")
    p.add_argument("--out", default="results/dynamics", help="output directory")
    p.add_argument("--before", default="", help="compare checkpoints: the one finetuning started from")
    p.add_argument("--after", default=[], nargs="+", help="with --before: the finetuned checkpoints, one per seed")
    p.add_argument("--task", default="sst2", help="with --before: the task whose template renders --data")
    p.add_argument(
        "--data", default="", help="with --before: the task's held-out file (the probe inputs; world tasks: --world's)"
    )
    # the shared flags live in the library, so --help waits for torch to load (seconds)
    from analysis import dynamics

    dynamics.add_setup_flags(p)
    args = p.parse_args(argv)
    if args.before:
        return compare_checkpoints(args, dynamics)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds: give at least one seed, e.g. 0,1,2")
    import time

    start = time.time()
    setup, model, schedule = dynamics.from_flags(args)
    result = dynamics.dynamics_experiment(setup, model, seeds, schedule, args.n_probe, args.keep)
    result |= {"config": vars(args), "seconds": round(time.time() - start, 1)}
    out = dynamics.write_report(args.out, "dynamics", result, dynamics.markdown(result))
    dynamics.plot(result, out / "dynamics.png")
    print(f"wrote {out}/dynamics.json, dynamics.md, dynamics.png ({result['seconds']} s)")
    return result


def compare_checkpoints(args, dynamics) -> dict:
    """``--before`` against each of ``--after`` on ``--data``'s first ``--n_probe`` inputs."""
    import time

    from train.finetuning import WORLD_TASKS, FinetuneConfig, read_examples

    if not args.after or not (args.data or args.task in WORLD_TASKS):
        raise SystemExit("--before needs --after (the finetuned checkpoints) and --data (the probe inputs)")
    start = time.time()
    examples = read_examples(FinetuneConfig(task=args.task, val_data=args.data, world=args.world), "val")
    prompts = [ex.prompt for ex in examples]
    result = dynamics.checkpoint_dynamics(args.before, args.after, prompts, args.n_probe, args.keep)
    result |= {"task": args.task, "config": vars(args), "seconds": round(time.time() - start, 1)}
    out = dynamics.write_report(args.out, "dynamics", result, dynamics.markdown(result))
    dynamics.plot(result, out / "dynamics.png")
    print(f"wrote {out}/dynamics.json, dynamics.md, dynamics.png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
