"""Train the same small model with sdpa and with momentum attention (MoAttn) and compare them over seeds:
validation perplexity and in-context accuracy (k = 0, 1, 4) on the bundled world, mean ± std, with a plot.

    python analysis/compare_attention.py                          # 3 seeds, minutes on a laptop CPU
    python analysis/compare_attention.py --seeds 0,1,2,3,4 --steps 400 --eta 0.5

Writes results/moattn/results.json, results.md and moattn.png; the runs go to --runs. See analysis/moattn.py.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from analysis/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import yaml  # noqa: E402

from eval.flags import FlagParser  # noqa: E402
from eval.settings import shots_list  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from analysis.moattn import CompareSettings  # standard library and eval helpers only: --help stays quick

    d = CompareSettings()
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default=d.world, help="the bundled world (generated there if missing)")
    p.add_argument("--out", default="results/moattn", help="results directory")
    p.add_argument("--runs", default=d.runs, help="run directories, one per arm and seed")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma-separated seeds (at least one)")
    p.add_argument("--eta", type=float, default=d.eta, help="MoAttn decay eta in (0, 1)")
    p.add_argument("--preset", default=d.preset, help="model preset both arms start from")
    p.add_argument(
        "--decoder",
        default=yaml.safe_dump(d.decoder, default_flow_style=True).strip(),
        help="decoder fields over the preset's (YAML mapping)",
    )
    p.add_argument("--steps", type=int, default=d.steps, help="training steps per run")
    p.add_argument("--seq_len", type=int, default=d.seq_len, help="tokens per training sequence")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--shots", default=",".join(map(str, d.shots)), help="demonstration counts k")
    p.add_argument("--trials", type=int, default=d.trials, help="seeded demonstration sets per k > 0")
    p.add_argument("--limit", type=int, default=d.limit, help="validation examples per in-context task")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    decoder = yaml.safe_load(args.decoder) or {}
    if not isinstance(decoder, dict):
        p.error(f"--decoder {args.decoder!r}: expected a YAML mapping such as '{{dim: 128, n_layers: 2}}'")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(CompareSettings) if hasattr(args, f.name)}
    given.update(seeds=seeds, decoder=decoder)
    try:
        settings = CompareSettings(**{**given, "shots": shots_list(args.shots)})
    except ValueError as err:
        p.error(str(err))
    from analysis.moattn import compare_attention, markdown_table, write_results  # loads torch on use

    results = compare_attention(settings)
    out = write_results(results, args.out)
    print(markdown_table(results))
    print(
        f"took {results['seconds']:.0f} s; results: {out / 'results.json'}, {out / 'results.md'}, {out / 'moattn.png'}"
    )
    return results


if __name__ == "__main__":
    main()
