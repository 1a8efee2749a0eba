"""Our decoder against transformers' LlamaForCausalLM on the SmolLM2-135M shape, same weights, one process.

Two measurements, fp32:
  training: forward + each library's own training loss (our fused chunked cross-entropy, transformers' ``labels=``)
    + backward + AdamW, as a fraction of a large fp32 matmul's FLOP/s measured in the same run;
  decoding: greedy KV-cache generation at batch 1 (tokens/s over the whole call, prompt included; both outputs
    must be token-identical), as a fraction of the memory-bandwidth bound: a large copy's bytes/s measured in the
    same run over the weight bytes every new token reads.
The two models' calls alternate and the best of ``--runs`` is kept for each, so other processes on a shared CPU
slow both alike. Real weights with ``--weights DIR`` (a transformers Llama directory such as a converted SmolLM2),
else random weights of the same shape (seeded). Results go to ``bench/results/smollm2.{json,md}``.

    python bench/smollm2.py [--weights DIR] [--batch 4] [--seq 128] [--prompt 32] [--new_tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root (this checkout's metalm, bench)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    RESULTS,
    machine_info,
    make_step,
    matmul_peak,
    memory_bandwidth,
    sync,
    time_alternating,
)
from metalm import Decoder, DecoderConfig  # noqa: E402
from metalm.hf import hf_config_from_decoder  # noqa: E402
from metalm.loss import fused_linear_cross_entropy  # noqa: E402

# SmolLM2-135M in our config's terms (its transformers LlamaConfig comes from metalm.hf); norm_eps 1e-5 and tied
# embeddings are DecoderConfig's defaults
SMOLLM2_SHAPE = dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, mlp_hidden=1536)
LLAMA = dict(positions="rotary", rope_theta=1e5, norm="rmsnorm", mlp="swiglu", attn_bias=False, mlp_bias=False)
OURS, THEIRS = "metalm", "transformers-llama"
COMPILED = "metalm, compile=True"


def load_pair(weights: Path | None, seed: int):
    """(transformers model, our Decoder) holding the same fp32 weights, both in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM  # here: the rest of the repository runs without it

    if weights is not None:
        hf = LlamaForCausalLM.from_pretrained(weights, dtype=torch.float32)
        return hf.eval(), Decoder.from_hf(weights)
    hf_config = hf_config_from_decoder(DecoderConfig(**SMOLLM2_SHAPE, **LLAMA, max_seq_len=8192))
    hf_config.pop("model_type")
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**hf_config))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = Decoder.from_hf(tmp)
    return hf.eval(), ours


def matvec_floor(model: Decoder, device: torch.device, repeats: int, input_major: bool) -> float:
    """Best seconds, of ``repeats``, to apply every linear layer of ``model`` to one vector in order: one token's
    matrix-vector products, every weight read once, nothing else. ``input_major=False`` multiplies by the weights
    as ``nn.Linear`` stores them ``(out, in)``, the kernel transformers calls, so no decoding step calling it can
    be faster; ``True`` by ``(in, out)`` copies, which our decoder uses while generating on CPU."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {m.in_features: torch.randn(1, m.in_features, device=device) for m in linears}
    weights = [m.weight.detach().t().contiguous() if input_major else m.weight.detach() for m in linears]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            for w, m in zip(weights, linears, strict=True):
                x = vectors[m.in_features]
                x @ w if input_major else torch.nn.functional.linear(x, w)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def bench_decoding(hf, ours: Decoder, args, device: torch.device) -> dict:
    """Greedy generation at batch 1; asserts both models emit the same tokens."""
    prompt = torch.randint(0, ours.cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    mask = torch.ones_like(prompt)
    n = args.new_tokens
    calls = {
        OURS: lambda: ours.generate(prompt, attention_mask=mask, max_new_tokens=n),
        COMPILED: lambda: ours.generate(prompt, attention_mask=mask, max_new_tokens=n, compile=True),
        THEIRS: lambda: hf.generate(
            prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
        ),
    }
    with torch.no_grad():
        outputs = {name: call() for name, call in calls.items()}  # warm-up, and the outputs to compare
        for name in (OURS, COMPILED):  # the warm-up call also compiled the step
            if not torch.equal(outputs[name], outputs[THEIRS]):
                differ = (outputs[name] != outputs[THEIRS]).nonzero()[0, 1].item() - args.prompt
                raise AssertionError(f"{name}: greedy outputs differ from new token {differ} on")
        times = time_alternating(calls, args.runs, device)
    floor = matvec_floor(ours, device, args.runs, input_major=False)
    floor_input_major = matvec_floor(ours, device, args.runs, input_major=True)
    bandwidth = memory_bandwidth(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())  # tied weights counted once
    bound = bandwidth / weight_bytes
    rows = {}
    for name, ts in times.items():
        rate = n / min(ts)
        rows[name] = {"call_s_best": min(ts), "call_s_all": ts, "tokens_per_s": rate, "fraction_of_bound": rate / bound}
    return {
        "prompt_tokens": args.prompt,
        "new_tokens": n,
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes_per_token": weight_bytes,
        "bound_tokens_per_s": bound,
        "matvec_floor_s_per_token": floor,
        "matvec_floor_input_major_s_per_token": floor_input_major,
        "largest_possible_ratio_same_layout": min(times[THEIRS]) / n / floor,
        "results": rows,
        "ratio": rows[OURS]["tokens_per_s"] / rows[THEIRS]["tokens_per_s"],
        "ratio_compiled": rows[COMPILED]["tokens_per_s"] / rows[THEIRS]["tokens_per_s"],
    }


def bench_training(hf, ours: Decoder, args, device: torch.device) -> dict:
    """Forward + loss + backward + AdamW at ``batch x seq`` tokens; both models start from the same loss."""
    ids = torch.randint(0, ours.cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(2))
    ids = ids.to(device)
    hf.train()
    ours.train()
    steps = {
        OURS: make_step(
            ours,
            ids,
            lambda m, x: fused_linear_cross_entropy(m(x, compute_logits=False).hidden_states, m.lm_head.weight, x)[0],
        ),
        THEIRS: make_step(hf, ids, lambda m, x: m(x, labels=x).loss),
    }
    first_loss = {name: step() for name, step in steps.items()}  # warm-up
    if abs(first_loss[OURS] - first_loss[THEIRS]) > 1e-4:
        raise AssertionError(f"the two models start from different losses: {first_loss}")
    times = time_alternating(steps, args.runs, device)
    peak = matmul_peak(device)
    flops = ours.flops_per_token(args.seq) * args.batch * args.seq
    rows = {}
    for name, ts in times.items():
        rows[name] = {
            "step_s_best": min(ts),
            "step_s_all": ts,
            "tokens_per_s": args.batch * args.seq / min(ts),
            "achieved_gflops": flops / min(ts) / 1e9,
            "fraction_of_matmul_peak": flops / min(ts) / peak,
            "first_loss": first_loss[name],
        }
    return {
        "batch": args.batch,
        "seq": args.seq,
        "flops_per_step": flops,
        "matmul_peak_gflops": peak / 1e9,
        "results": rows,
        "ratio": rows[OURS]["tokens_per_s"] / rows[THEIRS]["tokens_per_s"],
    }


def report(result: dict) -> str:
    """The markdown summary of ``result``."""
    m, d, t = result["machine"], result["decoding"], result["training"]
    lines = [
        f"# SmolLM2-135M shape: metalm Decoder vs transformers LlamaForCausalLM ({result['weights']})",
        "",
        f"fp32 on {m['device']} ({m['cpu']}, {m['threads']} threads), torch {m['torch']}, transformers "
        f"{m['transformers']}. The two models' calls alternate; each figure is the best of {result['runs']} "
        "(the CPU is shared with other processes, so single calls are noisy; the ratio is the robust number).",
        f"Command: `{m['command']}`",
        "",
        f"## Greedy decoding, batch 1, {d['prompt_tokens']}-token prompt + {d['new_tokens']} new tokens",
        "",
        f"Memory bandwidth (copy) {d['memory_bandwidth_gb_s']:.1f} GB/s over "
        f"{d['weight_bytes_per_token'] / 1e6:.0f} MB of weights per token: bound "
        f"{d['bound_tokens_per_s']:.1f} tokens/s. Outputs token-identical.",
        f"The matrix-vector products alone (every linear layer applied to one vector) take "
        f"{d['matvec_floor_s_per_token'] * 1e3:.0f} ms per token with the weights stored (out, in) as nn.Linear "
        f"and transformers keep them, so no decoder multiplying by that layout can beat transformers by more than "
        f"{d['largest_possible_ratio_same_layout']:.2f}x here; with (in, out) copies, which ours uses while "
        f"generating on CPU, they take {d['matvec_floor_input_major_s_per_token'] * 1e3:.0f} ms.",
        "",
        "| model | call (s) | tokens/s | of bandwidth bound |",
        "|---|---|---|---|",
    ]
    for name, r in d["results"].items():
        lines.append(f"| {name} | {r['call_s_best']:.2f} | {r['tokens_per_s']:.1f} | {r['fraction_of_bound']:.0%} |")
    lines += [
        "",
        f"Ratio metalm / transformers tokens/s: **{d['ratio']:.2f}** (eager); **{d['ratio_compiled']:.2f}** with "
        "`generate(..., compile=True)` (each step through torch.compile, compiled in the untimed warm-up call)",
        "",
        f"## Training step, batch {t['batch']} x seq {t['seq']} (forward + loss + backward + AdamW)",
        "",
        f"fp32 matmul peak {t['matmul_peak_gflops']:.0f} GFLOP/s.",
        "",
        "| model | step (s) | tokens/s | achieved GFLOP/s | of matmul peak | first loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in t["results"].items():
        lines.append(
            f"| {name} | {r['step_s_best']:.2f} | {r['tokens_per_s']:.0f} | {r['achieved_gflops']:.1f} | "
            f"{r['fraction_of_matmul_peak']:.0%} | {r['first_loss']:.4f} |"
        )
    lines += ["", f"Ratio metalm / transformers tokens/s: **{t['ratio']:.2f}**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="transformers Llama directory; default: seeded random weights")
    parser.add_argument("--batch", type=int, default=4, help="training sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="training sequence length")
    parser.add_argument("--prompt", type=int, default=32, help="decoding prompt length (random token ids)")
    parser.add_argument("--new_tokens", type=int, default=64, help="greedy tokens generated per call")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per model, after one warm-up; best is kept")
    parser.add_argument(
        "--skip", choices=("training", "decoding"), help="leave one measurement out (printed, not written)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads; default: torch's own choice")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hf, ours = load_pair(args.weights, args.seed)
    hf, ours = hf.to(device), ours.to(device)
    result = {
        "benchmark": "SmolLM2-135M shape, metalm Decoder vs transformers LlamaForCausalLM, fp32",
        "weights": str(args.weights) if args.weights else f"random (seed {args.seed})",
        "params": ours.num_params(),
        "runs": args.runs,
        "machine": machine_info(device),
    }
    # decoding first: training changes the weights
    result["decoding"] = bench_decoding(hf, ours, args, device) if args.skip != "decoding" else None
    result["training"] = bench_training(hf, ours, args, device) if args.skip != "training" else None
    if args.skip:  # a partial run is printed, not written over the full results
        print(json.dumps({k: result[k] for k in ("decoding", "training")}, indent=2))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "smollm2.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
