"""GPU readiness benchmarks: xformers against SDPA, bf16 MFU of training steps, FSDP with bf16 on one GPU.

bench/gpu.sh runs these on a machine with a CUDA GPU; each subcommand writes one JSON file into ``--out``:

    python bench/gpu.py attention --out bench/results/gpu     # xformers vs SDPA on vl-medium's decoder
    python bench/gpu.py mfu --out bench/results/gpu [--assets DIR]   # vl-medium and language-small training steps
    torchrun --standalone --nproc_per_node=1 bench/gpu.py fsdp --out bench/results/gpu
    python bench/gpu.py summary --out bench/results/gpu       # gpu.md from the JSON files

Without a CUDA GPU every subcommand refuses to run; ``--device cpu`` runs the same code (at the small shapes the
tests give) so that a typo shows up before a GPU is lent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (or by torchrun): import from the repository root, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import transformers  # noqa: E402

from data.batch import Batch  # noqa: E402
from encoders.base import DECODER_IDS, IMAGE_TEXT, OWN_IDS, PIXELS  # noqa: E402
from eval.flags import FlagParser  # noqa: E402
from metalm import MetaLM  # noqa: E402
from metalm.attention import resolve_backend  # noqa: E402
from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig  # noqa: E402
from metalm.decoder import Decoder  # noqa: E402
from metalm.docking import Dock, contiguous_positions, span_dock  # noqa: E402
from metalm.presets import get_preset  # noqa: E402
from train.config import LoopConfig  # noqa: E402
from train.loop import make_optimizer, shard_model  # noqa: E402
from train.throughput import batch_flops, batch_tokens, measure_peak_flops  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu"
NO_CUDA = "no CUDA GPU: this script needs one (torch.cuda.is_available() is False)"
SPEC_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
"""Dense bf16 tensor-core peak FLOP/s from the vendor's data sheets (SXM parts), by a name in the device's name."""
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
"""all-MiniLM-L6-v2's architecture beyond BERT's defaults (vocabulary, positions): language-small's text encoder."""


def pick_device(name: str) -> torch.device:
    """The device to run on: ``cuda`` (the local rank's GPU under torchrun) or, for tests, ``cpu``. Never falls back:
    ``cuda`` without a GPU exits with ``NO_CUDA``."""
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise SystemExit(f"--device {name}: expected cuda or cpu")
    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the benchmarks: GPU name (torch and nvidia-smi), memory, and library versions."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "xformers": xformers_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2**30, 1))
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["auto_attention"] = resolve_backend("auto", device)
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            info["nvidia_smi"] = f"not available ({err})"
    else:
        info["gpu"] = None
    return info


def xformers_version() -> str:
    try:
        import xformers  # optional: reported only
    except ImportError as err:
        return f"not installed ({err})"
    return xformers.__version__


def spec_peak(gpu_name: str | None) -> float | None:
    """The data-sheet dense bf16 peak of a GPU named ``gpu_name``, None when it is not in ``SPEC_PEAK_BF16``."""
    for key, peak in SPEC_PEAK_BF16.items():
        if gpu_name and key in gpu_name:
            return peak
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones (the GPU synchronised around
    each, so a timing holds the whole step)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------- attention backends


def attention_bench(
    cfg: DecoderConfig, batch: int, seq: int, device: torch.device, steps: int, warmup: int, padded: bool
) -> dict[str, Any]:
    """Forward + backward of the decoder's blocks (bf16 autocast, no output head) with each attention backend on
    the same weights and inputs: the largest output difference from SDPA, and seconds per step. With ``padded`` the
    last row ends in 1/8 padding (the masked path); otherwise every key is real (the causal fast path)."""
    torch.manual_seed(0)
    model = Decoder(dataclasses.replace(cfg, attention="sdpa")).to(device)
    x = torch.randn(batch, seq, cfg.dim, device=device) * cfg.init_std
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    if padded:
        mask[-1, seq - seq // 8 :] = 0

    def run() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = model(inputs_embeds=x, attention_mask=mask, compute_logits=False).hidden_states
        hidden.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return hidden

    result: dict[str, Any] = {"batch": batch, "seq": seq, "padded": padded}
    reference = None
    for backend in ("sdpa", "xformers"):
        model.cfg.attention = backend  # every block reads the one shared config at call time
        try:
            out = run().float()
            times = time_steps(run, device, steps, warmup)
        except (RuntimeError, NotImplementedError, ImportError) as err:  # no kernels here, or out of memory
            result[backend] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            continue
        entry = {"step_s": statistics.median(times), "tokens_per_s": batch * seq / statistics.median(times)}
        if backend == "sdpa":
            reference = out
        elif reference is not None:
            entry["max_abs_diff_vs_sdpa"] = float((out - reference).abs().max())
            entry["speedup_vs_sdpa"] = result["sdpa"]["step_s"] / entry["step_s"]
        result[backend] = entry
    return result


# ---------------------------------------------------------------- models and batches


def vl_medium() -> MetaLM:
    """The ``vl-medium`` preset (open_clip ViT-B/16 and a 24-layer 1024-wide decoder), random weights."""
    return MetaLM(get_preset("vl-medium", attention="sdpa"))


def language_small(assets: Path | None = None) -> MetaLM:
    """The ``language-small`` preset (SmolLM2-135M decoder, MiniLM text encoder with all but its last two layers
    frozen, linear connector) with the prepared real weights in ``assets/smollm2`` and ``assets/minilm``, or without
    ``assets`` the same shapes with random weights (a 6-layer 384-wide BERT)."""
    if assets:
        spec = {
            "preset": "language-small",
            "decoder": {"from_hf": str(assets / "smollm2")},
            "encoders": {"text": {"kind": "hf_text", "weights": str(assets / "minilm")}},
        }
        return MetaLM.from_spec(spec)[0]
    decoder = DecoderConfig(
        vocab_size=49152,
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        mlp="swiglu",
        mlp_hidden=1536,
        max_seq_len=2048,
        positions="rotary",
        rope_theta=100000.0,
        norm="rmsnorm",
        attn_bias=False,
        mlp_bias=False,
        tie_embeddings=True,
        attention="sdpa",
    )
    kwargs: dict[str, Any] = {"config": transformers.BertConfig(**MINILM_SHAPE).to_dict()}
    text = EncoderConfig("hf_text", kwargs, freeze="all_but_last_2", connector=ConnectorConfig("linear"))
    return MetaLM(MetaLMConfig(decoder, {"text": text}))


def random_batch(model: MetaLM, batch: int, seq: int, seed: int = 0) -> Batch:
    """A training batch for ``model`` of random tokens: one image per row after the first token for each image
    encoder, and for each text encoder spans of 64 tokens (or ``seq // 8``) every ``seq // 4`` positions after it."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.decoder.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    docks, start = [], 1
    for name, enc in model.encoders.items():
        if enc.reads in (PIXELS, IMAGE_TEXT):
            if enc.reads == IMAGE_TEXT:
                raise SystemExit(f"encoder {name!r}: joint vision-language batches are not benchmarked here")
            n = enc.num_tokens
            pixels = torch.randn(batch, 3, *enc.image_size, generator=g)
            starts = torch.full((batch,), start)
            docks.append(Dock(name, {"pixel_values": pixels}, torch.arange(batch), contiguous_positions(starts, n)))
            start += n + 1
    span = min(64, seq // 8)
    for name, enc in model.encoders.items():
        if enc.reads not in (DECODER_IDS, OWN_IDS):
            continue
        spans = [(b, s, s + span) for b in range(batch) for s in range(start, seq - span, max(seq // 4, span + 1))]
        if not spans:
            raise SystemExit(f"seq {seq} is too short for text spans after position {start}")
        if enc.reads == DECODER_IDS:
            docks.append(span_dock(ids, spans, name))
        else:
            own = torch.randint(3, enc.model.config.vocab_size, (len(spans), span), generator=g)
            positions = torch.stack([torch.arange(s, e) for _, s, e in spans])
            rows = torch.tensor([b for b, _, _ in spans])
            docks.append(Dock(name, {"input_ids": own, "attention_mask": torch.ones_like(own)}, rows, positions))
    return Batch(ids, ids.clone(), torch.ones_like(ids), docks)


def encoder_flops(model: MetaLM, batch: Batch) -> float:
    """Approximate training FLOPs of the encoders and connectors for ``batch``: 2 per parameter per input token
    forward, 4 more for parameters that train (backward); the encoders' attention is left out."""
    total = 0.0
    for dock in batch.docks:
        enc, conn = model.encoders[dock.encoder], model.connectors[dock.encoder]
        if "pixel_values" in dock.inputs:
            tokens = dock.inputs["pixel_values"].shape[0] * enc.num_tokens
        else:
            tokens = int(dock.inputs["attention_mask"].sum())
        params = sum(p.numel() for p in enc.parameters())
        trained = sum(p.numel() for p in enc.parameters() if p.requires_grad)
        total += tokens * (2 * params + 4 * trained) + 6 * tokens * sum(p.numel() for p in conn.parameters())
    return total


def train_step_bench(
    model: MetaLM, batch: Batch, device: torch.device, steps: int, warmup: int, peak: float, spec: float | None
) -> dict[str, Any]:
    """Seconds, tokens/s and MFU of the training loop's step (bf16 autocast, fused loss, backward, fused AdamW as
    ``train.loop.make_optimizer`` builds it). MFU counts the decoder's FLOPs as the trainer does
    (``train.throughput``), and ``mfu_with_encoders`` adds ``encoder_flops``."""
    model.to(device).train()
    batch = batch.to(device)
    optimizer = make_optimizer(model, LoopConfig(lr=1e-4), device)
    losses: list[float] = []

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(time_steps(step, device, steps, warmup))
    flops = batch_flops(batch, model.decoder.flops_per_token)
    with_encoders = flops + encoder_flops(model, batch)
    result = {
        "batch": batch.input_ids.shape[0],
        "seq": batch.input_ids.shape[1],
        "params": model.num_params(),
        "trainable_params": model.num_params(trainable_only=True),
        "step_s": seconds,
        "tokens_per_s": batch_tokens(batch) / seconds,
        "decoder_flops_per_step": flops,
        "flops_per_step_with_encoders": with_encoders,
        "measured_peak_flops": peak,
        "mfu": flops / seconds / peak,
        "mfu_with_encoders": with_encoders / seconds / peak,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "first_loss": losses[0],
    }
    if spec:
        result.update(spec_peak_flops=spec, mfu_of_spec=flops / seconds / spec)
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    optimizer.zero_grad(set_to_none=True)
    return result


# ---------------------------------------------------------------- FSDP


def fsdp_check(model: MetaLM, batch: Batch, device: torch.device, steps: int) -> dict[str, Any]:
    """A few training steps of ``model`` sharded with the loop's FSDP2 wrapping (``train.loop.shard_model``, bf16
    parameters, fp32 reductions) over the started process group, on one fixed batch: the loss must stay finite and
    go down; the full state dict a checkpoint gathers must come back in fp32."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    model.to(device).train()
    shard_model(model, bf16=True)
    batch = batch.to(device)
    optimizer = make_optimizer(model, LoopConfig(lr=1e-3, warmup_steps=0), device)
    losses = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "decreasing": losses[-1] < losses[0],
        "state_dict_fp32": all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point()),
    }


def metrics_check(path: Path) -> dict[str, Any]:
    """A training run's ``metrics.jsonl`` judged: every logged loss finite, and the mean of the last third below
    the mean of the first third (single steps are noisy)."""
    losses = [row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row]
    if len(losses) < 3:
        raise SystemExit(f"{path}: {len(losses)} logged losses; expected at least 3 (log every step)")
    third = len(losses) // 3
    first, last = statistics.fmean(losses[:third]), statistics.fmean(losses[-third:])
    return {
        "metrics": str(path),
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "decreasing": last < first,
        "first_third_mean": first,
        "last_third_mean": last,
    }


# ---------------------------------------------------------------- report


def write_json(out: Path, name: str, data: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def summary_markdown(results: dict[str, dict], steps: list[list[str]] | None = None) -> str:
    """gpu.md: the machine, bench/gpu.sh's steps (name, exit code, seconds), then one section per benchmark, from
    the JSON files the subcommands wrote."""
    info = next((r["info"] for r in results.values() if "info" in r), {})
    lines = [
        "# GPU readiness (bench/gpu.sh)",
        "",
        f"GPU: **{info.get('gpu')}** ({info.get('memory_gib')} GiB, capability {info.get('capability')}); "
        f"nvidia-smi: {info.get('nvidia_smi')}",
        f"torch {info.get('torch')} (CUDA {info.get('cuda')}), xformers {info.get('xformers')} (attention 'auto' "
        f"picks {info.get('auto_attention')}), Python {info.get('python')}",
        "",
    ]
    if steps:
        lines += ["| step | exit code | seconds |", "|---|---|---|"]
        lines += [f"| {name} | {rc}{'' if rc == '0' else ' FAILED'} | {sec} |" for name, rc, sec in steps]
        lines.append("")
    if "attention" in results:
        shape = results["attention"]["decoder"]
        lines += [f"## xformers against SDPA (forward + backward of {shape}'s decoder blocks, bf16 autocast)", ""]
        lines += [
            "| case | backend | step s | tokens/s | speed-up | max abs diff vs SDPA |",
            "|---|---|---|---|---|---|",
        ]
        for case in results["attention"]["cases"]:
            label = f"B{case['batch']} T{case['seq']} {'padded' if case['padded'] else 'causal'}"
            for backend in ("sdpa", "xformers"):
                e = case[backend]
                if "error" in e:
                    lines.append(f"| {label} | {backend} | {e['error']} | | | |")
                    continue
                lines.append(
                    f"| {label} | {backend} | {e['step_s']:.4f} | {e['tokens_per_s']:.0f} | "
                    f"{e.get('speedup_vs_sdpa', 1.0):.2f}x | {e.get('max_abs_diff_vs_sdpa', 0.0):.2e} |"
                )
        lines.append("")
    if "mfu" in results:
        lines += ["## bf16 training step (MFU: decoder FLOPs as the trainer counts them)", ""]
        lines += [
            "| model | batch x seq | params | step s | tokens/s | MFU (measured peak) | with encoders "
            "| MFU (spec peak) | memory GiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["mfu"]["models"].items():
            if "error" in r:
                lines.append(f"| {name} | {r['error']} | | | | | | | |")
                continue
            spec = f"{r['mfu_of_spec']:.1%}" if "mfu_of_spec" in r else "n/a"
            lines.append(
                f"| {name} | {r['batch']} x {r['seq']} | {r['params'] / 1e6:.0f}M | {r['step_s']:.3f} | "
                f"{r['tokens_per_s']:.0f} | {r['mfu']:.1%} | {r['mfu_with_encoders']:.1%} | {spec} | "
                f"{r.get('max_memory_gib')} |"
            )
        lines += ["", f"Measured bf16 matmul peak: {results['mfu'].get('measured_peak_flops', 0):.3g} FLOP/s.", ""]
    if "fsdp" in results:
        r = results["fsdp"]
        losses = ", ".join(f"{v:.3f}" for v in r["losses"])
        lines += [
            "## FSDP2 with bf16 mixed precision on one GPU (torchrun, tiny preset)",
            "",
            f"sharded: {r['sharded']}, backend {r['backend']}, world size {r['world_size']}; losses {losses}; "
            f"finite {r['finite']}, decreasing {r['decreasing']}; full state dict fp32: {r['state_dict_fp32']}",
            "",
        ]
    if "pretrain" in results:
        r = results["pretrain"]
        lines += [
            "## train/pretrain.py under torchrun with --dist fsdp --precision bf16 (tiny preset, small world)",
            "",
            f"{len(r['losses'])} steps; loss {r['first_third_mean']:.3f} (first third) -> {r['last_third_mean']:.3f} "
            f"(last third); finite {r['finite']}, decreasing {r['decreasing']}. At world size 1 the loop does not "
            "shard (`wrap_model` shards only with several processes): this checks the CLI path, bf16 autocast and "
            "checkpoints on CUDA; the section above checks FSDP2 itself.",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> Any:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("attention", "mfu", "fsdp", "pretrain", "summary"), help="what to run")
    parser.add_argument("--out", default=str(RESULTS), help=f"results directory (default: {RESULTS})")
    parser.add_argument("--device", default="cuda", help="cuda (default; refused without a GPU) or cpu (for tests)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default: 3)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (default: 8)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence (default: 2048)")
    parser.add_argument(
        "--models", default="vl-medium,language-small", help="mfu: models to time (default: vl-medium,language-small)"
    )
    parser.add_argument(
        "--assets", default="", help="mfu: directory with prepared smollm2/ and minilm/ (default: random)"
    )
    parser.add_argument("--metrics", default="", help="pretrain: the run's metrics.jsonl to check")
    parser.add_argument(
        "--decoder", default="vl-medium", help="attention: preset whose decoder shape to time, or 'tiny' for tests"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "seq"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: expected at least 0")
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; expected some of {', '.join(MODELS)}")
    if args.assets and not Path(args.assets).is_dir():
        parser.error(f"--assets {args.assets}: not a directory")
    return args


MODELS: dict[str, Callable[[Any], MetaLM]] = {
    "vl-medium": lambda args: vl_medium(),
    "language-small": lambda args: language_small(Path(args.assets) if args.assets else None),
}


def run_attention(args: Any, device: torch.device, info: dict[str, Any]) -> dict[str, Any]:
    cfg = get_preset(args.decoder).decoder
    cases = [attention_bench(cfg, args.batch, args.seq, device, args.steps, args.warmup, p) for p in (False, True)]
    return {"decoder": args.decoder, "cases": cases}


def run_mfu(args: Any, device: torch.device, info: dict[str, Any]) -> dict[str, Any]:
    peak = measure_peak_flops(device, bf16=True)
    models = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = MODELS[name](args)
        try:
            batch = random_batch(model, args.batch, args.seq)
            models[name] = train_step_bench(model, batch, device, args.steps, args.warmup, peak, spec_peak(info["gpu"]))
        except torch.OutOfMemoryError as err:
            models[name] = {"error": f"out of memory at batch {args.batch}: {str(err).splitlines()[0]}"}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"measured_peak_flops": peak, "models": models}


def run_fsdp(args: Any, device: torch.device, info: dict[str, Any]) -> dict[str, Any]:
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        torch.manual_seed(0)
        model = MetaLM(get_preset("tiny", attention="sdpa"))
        return fsdp_check(model, random_batch(model, args.batch, min(args.seq, 256)), device, args.steps)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.command == "summary":
        results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
        steps_file = out / "steps.tsv"
        steps = [line.split("\t") for line in steps_file.read_text().splitlines()] if steps_file.is_file() else None
        (out / "gpu.md").write_text(summary_markdown(results, steps) + "\n")
        print((out / "gpu.md").read_text())
        return 0
    if args.command == "pretrain":
        if not Path(args.metrics).is_file():
            raise SystemExit(f"--metrics {args.metrics!r}: no such file (pretrain checks a run's metrics.jsonl)")
        result = metrics_check(Path(args.metrics))
        print(json.dumps(result, indent=2))
        print(f"wrote {write_json(out, 'pretrain', result)}")
        return 0 if result["finite"] and result["decreasing"] else 1
    device = pick_device(args.device)
    run = {"attention": run_attention, "mfu": run_mfu, "fsdp": run_fsdp}[args.command]
    info = device_info(device)
    result = {"info": info, **run(args, device, info)}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
        print(f"wrote {write_json(out, args.command, result)}")
    if args.command == "fsdp" and not (result["finite"] and result["decreasing"] and result["sharded"]):
        print("FSDP check failed: the loss must be finite and decrease, and every parameter sharded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
