"""Training-step throughput of our decoder vs transformers' GPT-2 of the same size, in one process.

Both models hold the same weights (ours is loaded from the GPT-2 checkpoint with ``Decoder.from_hf``) and run the
same step: forward, cross-entropy (each library's own training loss: our fused chunked one, transformers'
``labels=`` path), backward, AdamW. Steps alternate between the two so drift in machine speed
hits both alike. Achieved FLOP/s is reported as a fraction of a large fp32 matmul's FLOP/s measured in the same
run. Results go to ``bench/results/decoder.{json,md}``.

    python bench/decoder.py [--steps 6] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root (this checkout's metalm, bench)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.common import RESULTS, machine_info, make_step, matmul_peak, time_alternating  # noqa: E402
from metalm import Decoder  # noqa: E402
from metalm.loss import fused_linear_cross_entropy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=args.layers,
        n_embd=args.dim,
        n_head=args.heads,
        vocab_size=args.vocab,
        n_positions=max(1024, args.seq),
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = Decoder.from_hf(tmp)
    hf, ours = hf.to(device).train(), ours.to(device).train()
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    steps = {
        "metalm": make_step(
            ours,
            ids,
            lambda m, x: fused_linear_cross_entropy(m(x, compute_logits=False).hidden_states, m.lm_head.weight, x)[0],
        ),
        "transformers-gpt2": make_step(hf, ids, lambda m, x: m(x, labels=x).loss),
    }
    first_loss = {name: step() for name, step in steps.items()}  # warm-up 1, and both start from the same loss
    for step in steps.values():
        step()
    times = time_alternating(steps, args.steps, device)
    peak = matmul_peak(device)
    flops_per_token = ours.flops_per_token(args.seq)
    tokens = args.batch * args.seq
    rows = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        rows[name] = {
            "step_s_median": t,
            "step_s_min": min(ts),
            "tokens_per_s": tokens / t,
            "achieved_tflops": flops_per_token * tokens / t / 1e12,
            "fraction_of_matmul_peak": flops_per_token * tokens / t / peak,
            "first_loss": first_loss[name],
        }
    ratio = rows["metalm"]["tokens_per_s"] / rows["transformers-gpt2"]["tokens_per_s"]
    result = {
        "benchmark": "decoder training step (forward + cross-entropy + backward + AdamW), fp32",
        "shape": {k: getattr(args, k) for k in ("layers", "dim", "heads", "vocab", "seq", "batch")},
        "params": ours.num_params(),
        **machine_info(device),
        "matmul_peak_tflops": peak / 1e12,
        "flops_per_token": flops_per_token,
        "timed_steps": args.steps,
        "results": rows,
        "ratio_metalm_over_gpt2": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decoder.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Decoder training step, {args.layers} layers x {args.dim} hidden x {args.heads} heads, vocab {args.vocab}, "
        f"batch {args.batch} x seq {args.seq}, fp32 on {device} ({torch.get_num_threads()} threads), "
        f"median of {args.steps} steps; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s.",
        "",
        "| model | step (s) | tokens/s | achieved GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['step_s_median']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['achieved_tflops'] * 1e3:.1f} | {r['fraction_of_matmul_peak']:.1%} |"
        )
    lines += ["", f"Ratio metalm / transformers GPT-2 tokens/s: **{ratio:.2f}**"]
    (args.out / "decoder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
