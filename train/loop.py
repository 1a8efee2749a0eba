"""The one training loop that pretraining, finetuning and instruction tuning share.

It runs single-process or under torchrun (DDP, or FSDP2 for models that do not fit one device), with bf16
autocast on CUDA and fp32 on CPU, gradient accumulation and clipping, AdamW with decay / no-decay groups and a
warm-up + cosine / linear schedule. Checkpoints hold safetensors weights plus the training state (optimizer, step,
data position, RNG) and are written atomically; ``--resume`` continues exactly where the run stopped. SIGTERM /
SIGINT save a checkpoint and stop the run early (``TrainResult.exit_code``: 128 + the signal's number); NaN / inf
losses skip the step and stop the run after too many in a row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from metalm.io import JSONFileError, atomic_write_dir, atomic_write_text, iter_jsonl, read_json, read_jsonl
from metalm.model import MetaLM, write_pretrained
from train.config import LoopConfig
from train.provenance import environment
from train.throughput import batch_flops, batch_tokens, measure_peak_flops, mfu, mfu_warning

log = logging.getLogger("metalm.train")
STATE_NAME = "trainer_state.pt"


@dataclass
class Env:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_env() -> Env:
    """Read torchrun's variables; start the process group (NCCL on CUDA, gloo on CPU) when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Env(rank, world, local, device)


def all_reduce_max(value: float, env: Env) -> float:
    """The largest of one number across processes (how ranks agree to stop or skip together)."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: list[float], env: Env) -> list[float]:
    if env.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def wrap_model(model: MetaLM, cfg: LoopConfig, env: Env) -> torch.nn.Module:
    """DDP or FSDP2 under torchrun; the model itself when single-process. Optional activation checkpointing."""
    model.decoder.activation_checkpointing = cfg.activation_checkpointing
    model.to(env.device)
    wrapped: torch.nn.Module = model
    if env.world_size > 1 and cfg.dist == "fsdp":
        shard_model(model, _bf16(cfg, env))
    elif env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.local_rank] if env.device.type == "cuda" else None
        # a batch may leave an encoder unused (e.g. no image in it), so DDP must look for unused parameters
        wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if cfg.compile:
        backends = torch.compiler.list_backends(exclude_tags=())
        if cfg.compile_backend not in backends:
            raise ValueError(
                f"compile_backend = {cfg.compile_backend!r}: expected a torch.compile backend such as "
                "inductor, aot_eager or eager (torch.compiler.list_backends(exclude_tags=()) lists "
                "them all)"
            )
        # checkpoints still get clean names: get_model_state_dict drops the compiled wrapper's ``_orig_mod.``
        wrapped = torch.compile(wrapped, backend=cfg.compile_backend)
    return wrapped


def shard_model(model: MetaLM, bf16: bool) -> None:
    """FSDP2 in place over the started process group: each decoder block, each encoder, then the whole model; with
    ``bf16`` the parameters are gathered in bf16 and gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mp_policy": mp} if mp else {}
    for block in model.decoder.blocks:
        fully_shard(block, **kw)
    for enc in model.encoders.values():
        fully_shard(enc, **kw)
    fully_shard(model, **kw)


def _bf16(cfg: LoopConfig, env: Env) -> bool:
    if cfg.precision == "bf16":
        return True
    return cfg.precision == "auto" and env.device.type == "cuda"


def make_optimizer(model: MetaLM, cfg: LoopConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices (and embeddings) are decayed, biases and norm gains are not. Fused where supported."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu") and not any(isinstance(p, torch.distributed.tensor.DTensor) for p in decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up to ``lr``, then cosine or linear decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


# ---------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(cfg: LoopConfig) -> Path:
    return Path(cfg.out) / "checkpoints"


def checkpoint_step(path: Path) -> int:
    """The step a ``step_NNNNNNN`` checkpoint directory was saved at."""
    return int(path.name.removeprefix("step_"))


def step_dirs(cfg: LoopConfig) -> list[Path]:
    """The checkpoint directories in ``--out``, newest (highest step) first."""
    found = [p for p in checkpoint_root(cfg).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def named_checkpoint(cfg: LoopConfig) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names (written only after that checkpoint was complete), if any."""
    pointer = checkpoint_root(cfg) / "latest"
    return checkpoint_root(cfg) / pointer.read_text().strip() if pointer.is_file() else None


def checkpoint_candidates(cfg: LoopConfig) -> list[Path]:
    """Checkpoints to resume from, best first: the one ``latest`` names, then every step directory, newest first
    (for when ``latest`` is missing or names a damaged one). Only directories holding a training state count."""
    named = named_checkpoint(cfg)
    first = [named] if named is not None else []
    return [p for p in dict.fromkeys(first + step_dirs(cfg)) if (p / STATE_NAME).is_file()]


def latest_checkpoint(cfg: LoopConfig) -> Path | None:
    """The checkpoint ``--resume`` tries first (``checkpoint_candidates``), or None when there is none."""
    candidates = checkpoint_candidates(cfg)
    return candidates[0] if candidates else None


def save_checkpoint(
    path: Path,
    model: MetaLM,
    wrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    cfg: LoopConfig,
    env: Env,
) -> None:
    """Gather full weights (and optimizer state) on rank 0 and write them atomically as one directory."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(wrapped, options=opts)
    optim = get_optimizer_state_dict(wrapped, optimizer, options=opts) if optimizer is not None else None
    if env.main:

        def write(tmp: Path) -> None:
            write_pretrained(tmp, model, weights)
            atomic_write_text(tmp / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
            if optim is not None:
                torch.save({**state, "optimizer": optim, "rng": rng_state()}, tmp / STATE_NAME)

        atomic_write_dir(path, write)
    if env.world_size > 1:
        dist.barrier()


class CheckpointError(Exception):
    """A checkpoint file that cannot be read (truncated, emptied, not what it should be); the message names it."""


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and training state saved in ``path``, read before anything is applied so that a damaged
    checkpoint leaves the model untouched; raises CheckpointError naming the file that cannot be read."""
    weights_file, state_file = path / "model.safetensors", path / STATE_NAME
    try:
        weights = load_file(str(weights_file))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{weights_file}: cannot be read ({err})") from err
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{state_file}: cannot be read ({err})") from err
    return weights, state


def load_checkpoint(path: Path, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer state and RNG from ``path``; returns the saved step and data position."""
    weights, state = read_checkpoint(path)
    opts = StateDictOptions(full_state_dict=True)
    model = wrapped.module if hasattr(wrapped, "module") else wrapped
    if getattr(model, "config", None) is not None and model.config.decoder.tie_embeddings:
        weights["decoder.lm_head.weight"] = weights["decoder.tok_emb.weight"]
    set_model_state_dict(wrapped, weights, options=opts)
    set_optimizer_state_dict(wrapped, optimizer, state["optimizer"], options=opts)
    set_rng_state(state["rng"])
    return state


def resume_checkpoint(
    cfg: LoopConfig, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, env: Env
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that can be read (a damaged one is named in a warning and the next older one is
    tried); None when ``--out`` holds none. Raises when there are checkpoints but none can be read."""
    candidates = checkpoint_candidates(cfg)
    named, pointer = named_checkpoint(cfg), checkpoint_root(cfg) / "latest"
    if env.main and candidates and candidates[0] != named:
        why = f"{pointer} names {named}, which holds no {STATE_NAME}" if named else f"no {pointer}"
        log.warning("--resume: %s; trying the newest step directory, %s", why, candidates[0])
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path, wrapped, optimizer)
        except CheckpointError as err:
            errors.append(str(err))
            if env.main:
                log.warning("--resume: %s; trying an older checkpoint", err)
            continue
        if errors and env.main:
            log.warning("--resume: resuming from %s, the newest checkpoint that can be read", path)
        return path, state
    if errors:
        raise CheckpointError(f"--resume: no checkpoint in {checkpoint_root(cfg)} can be read: {'; '.join(errors)}")
    return None


def prune_checkpoints(cfg: LoopConfig, current: Path) -> None:
    """Keep ``current`` (the checkpoint just written) and the ``keep_last - 1`` newest before it. Checkpoints after
    it belong to a series this run left (it resumed past a damaged one), so they go too: ``latest`` is ``current``."""
    step, dirs = checkpoint_step(current), step_dirs(cfg)
    older = [p for p in dirs if checkpoint_step(p) < step]
    newer = [p for p in dirs if checkpoint_step(p) > step]
    for old in newer + older[cfg.keep_last - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def saved_config(checkpoint: Path) -> Any:
    """The training config saved with ``checkpoint`` (its train_config.json), None when there is none; a malformed
    one raises an error naming it."""
    path = checkpoint / "train_config.json"
    return read_json(path, "the run's training config") if path.is_file() else None


def saved_max_steps(checkpoint: Path) -> int | None:
    """The max_steps of the run that wrote ``checkpoint``; None when its train_config.json cannot be read."""
    try:
        return int(saved_config(checkpoint)["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_finished(cfg: LoopConfig, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` ends a finished run: saved at its run's max_steps, with the final model written."""
    saved = saved_max_steps(checkpoint)
    finished = saved is not None and checkpoint_step(checkpoint) >= saved
    return finished and (Path(cfg.out) / "final" / "model.safetensors").is_file()


def check_fresh_out(cfg: LoopConfig) -> None:
    """A run without ``--resume`` never discards work ``--resume`` could continue: it refuses an ``--out`` whose
    checkpoints belong to an unfinished run (a finished one is replaced: running a command twice repeats it)."""
    latest = latest_checkpoint(cfg)
    if cfg.resume or latest is None or run_finished(cfg, latest):
        return
    saved = saved_max_steps(latest)
    raise FileExistsError(
        f"--out {cfg.out}: {checkpoint_root(cfg)} holds an unfinished run (newest checkpoint {latest.name}"
        f"{f' of {saved} steps' if saved else ''}); continue it with --resume, or start a new run elsewhere with "
        f"--out DIR (or remove {checkpoint_root(cfg)} to start over here)"
    )


def start_series(cfg: LoopConfig, metrics_path: Path) -> None:
    """A fresh run into an ``--out`` that holds a finished run: remove its checkpoints and metrics (metrics.jsonl and
    the TensorBoard events beside it), so the new run's checkpoints are never pruned in favour of higher-numbered old
    ones and its metrics are its own."""
    old = sorted(p.name for p in step_dirs(cfg))
    if old:
        log.warning(
            "%s holds a finished run's checkpoints (%s): starting a new checkpoint series; they are removed",
            checkpoint_root(cfg),
            ", ".join(old),
        )
    for name in old:
        shutil.rmtree(checkpoint_root(cfg) / name)
    (checkpoint_root(cfg) / "latest").unlink(missing_ok=True)
    metrics_path.unlink(missing_ok=True)
    shutil.rmtree(metrics_path.parent / "tensorboard", ignore_errors=True)


def clear_partial_writes(cfg: LoopConfig) -> None:
    """Remove what a killed atomic write left (temporary ``.step_N.*`` / ``.final.*`` directories, ``.latest.*``
    files); a ``.NAME.old`` whose NAME is missing was killed between its two renames and is NAME itself: put back."""
    out, root = Path(cfg.out), checkpoint_root(cfg)
    leftovers = [*root.glob(".step_*"), *root.glob(".latest.*.tmp"), *out.glob(".final.*"), *out.glob(".*.json.*.tmp")]
    for path in leftovers:
        target = path.parent / path.name[1:].removesuffix(".old")
        if path.name.endswith(".old") and path.is_dir() and not target.exists():
            os.replace(path, target)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def warn_if_schedule_stretched(cfg: LoopConfig, checkpoint: Path) -> None:
    """Extending a run (a larger ``--max_steps`` on ``--resume``) is exact only when the learning rate does not
    depend on max_steps (``--schedule constant``); a decaying schedule is stretched from the restart on, so say so."""
    saved = saved_max_steps(checkpoint)
    if saved is not None and saved != cfg.max_steps and cfg.schedule != "constant":
        log.warning(
            "--resume: %s was trained with max_steps = %d and this run has %d: the %s learning-rate schedule decays "
            "to max_steps, so the steps from here follow the new schedule and the result differs from an "
            "uninterrupted %d-step run (only --schedule constant extends a run exactly)",
            checkpoint,
            saved,
            cfg.max_steps,
            cfg.schedule,
            cfg.max_steps,
        )


# ---------------------------------------------------------------- the loop


class StopRequested:
    """Set by SIGTERM / SIGINT; the loop checks it between steps, saves and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signal = signum

    @contextlib.contextmanager
    def installed(self):
        old = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


@dataclass
class TrainResult:
    """What a call of ``train`` did: ``losses`` holds this call's steps; ``first_loss`` and ``last_loss`` are the
    run's own, carried through checkpoints so a resumed run reports them too."""

    step: int
    max_steps: int
    losses: list[float]
    stop_signal: int | None = None
    nan_steps: int = 0
    final_dir: Path | None = None
    metrics: list[dict] = field(default_factory=list)
    first_loss: float | None = None
    last_loss: float | None = None

    @property
    def stopped_by_signal(self) -> bool:
        return self.stop_signal is not None

    @property
    def exit_code(self) -> int:
        """0 for a finished run; 128 + the signal's number (143 for SIGTERM, 130 for SIGINT, as a shell reports a
        process the signal killed) for one that a signal stopped early, after saving: a scheduler can tell."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0

    def run_summary(self) -> dict[str, Any]:
        """How the run ended, for every job's summary.json: steps, whether (and by which signal) it stopped early,
        the exit code its script returns, and the NaN steps it skipped."""
        return {
            "steps": self.step,
            "max_steps": self.max_steps,
            "stopped_by_signal": self.stopped_by_signal,
            "stop_signal": signal.Signals(self.stop_signal).name if self.stopped_by_signal else None,
            "exit_code": self.exit_code,
            "nan_steps": self.nan_steps,
        }

    def final_losses(self) -> dict[str, Any]:
        """The run's first and last training loss, the last validation loss and the final checkpoint, for a
        summary."""
        vals = [m["val_loss"] for m in self.metrics if "val_loss" in m]
        return {
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "val_loss": vals[-1] if vals else None,
            "final": str(self.final_dir),
        }


def write_summary(out: str | Path, summary: dict) -> None:
    """``out/summary.json``: what a run learned and what produced it (``train.provenance``), written atomically."""
    summary = {**summary, "environment": environment()}
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


class Metrics:
    """JSONL (and TensorBoard where it is installed) on rank 0. ``resumed_at``: the step a resumed run continues
    from; TensorBoard then hides the events of that step and later (``purge_step``), as ``drop_replayed`` drops
    their rows, so a replayed step shows once."""

    def __init__(self, out: Path, main: bool, resumed_at: int | None = None) -> None:
        self.main = main
        self.path = out / "metrics.jsonl"
        self.tb = None
        if main:
            out.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_at)
            except ImportError:
                log.info("tensorboard not installed: metrics go to %s only", self.path)

    def drop_replayed(self, step: int, redo_final_eval: bool) -> None:
        """On resume from the checkpoint of ``step``: drop the rows the run will write again, those of later steps
        (a kill came after they were logged, before the next checkpoint), a partial line a kill left, and with
        ``redo_final_eval`` the evaluation rows at ``step`` (the run resumes at its end and evaluates again). The
        kept rows of ``step`` itself go to TensorBoard again, since its purge hides that step's earlier events."""
        if not self.main or not self.path.is_file():
            return
        kept = []
        for _, row in iter_jsonl(self.path, "the run's metrics"):
            if isinstance(row, JSONFileError):  # a partial line a kill left
                continue
            if row["step"] < step or (row["step"] == step and not (redo_final_eval and "loss" not in row)):
                kept.append(row)
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        for row in kept:
            if row["step"] == step:
                self._to_tensorboard(step, {k: v for k, v in row.items() if k != "step"})

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self._to_tensorboard(step, values)

    def _to_tensorboard(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    """Training (and validation) loss against step, from metrics.jsonl."""
    from metalm.io import pyplot

    plt = pyplot()

    rows = read_jsonl(metrics_path, "the run's metrics")
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key)
    baseline = [r["unigram_loss"] for r in rows if "unigram_loss" in r]
    if baseline:
        ax.axhline(baseline[-1], color="grey", linestyle="--", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def prepare_run(
    cfg: LoopConfig, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, env: Env
) -> dict[str, Any]:
    """Ready ``--out`` for this run and return the training state it starts from ({} at step 0): what killed writes
    left is cleared; a fresh run refuses an unfinished run's directory and replaces a finished one's checkpoints;
    ``--resume`` loads the newest checkpoint that can be read."""
    check_fresh_out(cfg)
    out = Path(cfg.out)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        clear_partial_writes(cfg)
        if not cfg.resume:
            start_series(cfg, out / "metrics.jsonl")
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    if env.world_size > 1:
        dist.barrier()  # the others read checkpoints only once rank 0 has tidied them
    found = resume_checkpoint(cfg, wrapped, optimizer, env) if cfg.resume else None
    if found is None:
        if cfg.resume and env.main:
            log.warning("--resume: no checkpoint in %s yet; starting from step 0", checkpoint_root(cfg))
        return {}
    path, state = found
    if env.main:
        log.info("resumed from %s at step %d", path, state["step"])
        warn_if_schedule_stretched(cfg, path)
    return state


def train(
    cfg: LoopConfig,
    model: MetaLM,
    batches: Callable[[int], Iterator[Any]],
    env: Env | None = None,
    evaluate: Callable[[MetaLM, int], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``model`` on ``batches(skip)`` (an iterator of micro-batches that first skips ``skip`` of them).

    Each batch needs ``.to(device)`` and the fields ``input_ids``, ``docks``, ``attention_mask``, ``labels``.
    """
    env = env or setup_env()
    out = Path(cfg.out)
    wrapped = wrap_model(model, cfg, env)
    optimizer = make_optimizer(model, cfg, env.device)
    state = prepare_run(cfg, wrapped, optimizer, env)
    step, consumed = state.get("step", 0), state.get("consumed", 0)
    data = batches(consumed)
    bf16 = _bf16(cfg, env)
    peak = cfg.peak_flops or measure_peak_flops(env.device, bf16)
    mfu_warned = False
    metrics = Metrics(out, env.main, resumed_at=step if state else None)
    if state:
        metrics.drop_replayed(step, redo_final_eval=step >= cfg.max_steps)
    result = TrainResult(step, cfg.max_steps, [], first_loss=state.get("first_loss"), last_loss=state.get("last_loss"))
    stop = StopRequested()
    nan_run = 0
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not env.main, desc="train", dynamic_ncols=True)
    window_tokens, window_flops, window_start = 0.0, 0.0, time.perf_counter()
    with stop.installed():
        while step < cfg.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss_sum, targets, tokens, flops = 0.0, 0.0, 0.0, 0.0
            for micro in range(cfg.grad_accum):
                batch = next(data).to(env.device)
                consumed += 1
                sync = micro == cfg.grad_accum - 1 or not hasattr(wrapped, "no_sync")
                ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                with ctx, torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out_ = wrapped(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
                    loss = out_.loss
                (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / cfg.grad_accum
                targets += out_.n_targets
                tokens += batch_tokens(batch)
                flops += batch_flops(batch, model.decoder.flops_per_token)
            bad = all_reduce_max(0.0 if math.isfinite(loss_sum) else 1.0, env)
            if bad:
                optimizer.zero_grad(set_to_none=True)
                nan_run += 1
                result.nan_steps += 1
                if env.main:
                    log.warning("step %d: loss is %s; step skipped (%d in a row)", step, loss_sum, nan_run)
                if nan_run >= cfg.max_nan_steps:
                    raise RuntimeError(
                        f"{nan_run} consecutive steps had a NaN or inf loss (max_nan_steps = {cfg.max_nan_steps}); "
                        "stopping. Lower --lr, check the data, or resume from the last checkpoint."
                    )
            else:
                nan_run = 0
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_avg, tokens, flops = all_reduce_sum([loss_sum, tokens, flops], env)
            loss_avg /= env.world_size
            result.losses.append(loss_avg)
            result.first_loss = loss_avg if result.first_loss is None else result.first_loss
            result.last_loss = loss_avg
            window_tokens += tokens
            window_flops += flops
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / max(elapsed, 1e-9)
                row = {
                    "loss": loss_avg,
                    "lr": lr_at(step - 1, cfg),
                    "tokens_per_s": tps,
                    "mfu": mfu(window_flops, elapsed, peak, env.world_size),
                    "targets": targets,
                }
                if not bad:
                    row["grad_norm"] = float(norm)
                metrics.write(step, row)
                result.metrics.append({"step": step, **row})
                if row["mfu"] > 1.0 and not mfu_warned and env.main:
                    log.warning(mfu_warning(row["mfu"], peak, measured=not cfg.peak_flops))
                    mfu_warned = True
                mark = "!" if row["mfu"] > 1.0 else ""
                bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tps:.0f}", mfu=f"{row['mfu']:.1%}{mark}")
                window_tokens, window_flops, window_start = 0.0, 0.0, time.perf_counter()
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                values = evaluate(model, step)
                metrics.write(step, values)
                result.metrics.append({"step": step, **values})
            stop_now = int(all_reduce_max(float(stop.signal or 0), env))  # the signal's number, 0 for none
            if stop_now or step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                path = checkpoint_root(cfg) / f"step_{step:07d}"
                saved = {
                    "step": step,
                    "consumed": consumed,
                    "first_loss": result.first_loss,
                    "last_loss": result.last_loss,
                }
                save_checkpoint(path, model, wrapped, optimizer, saved, cfg, env)
                if env.main:
                    atomic_write_text(checkpoint_root(cfg) / "latest", path.name)
                    prune_checkpoints(cfg, path)
            if stop_now:
                result.stop_signal = stop_now
                if env.main:
                    log.warning(
                        "stopped early by %s at step %d of %d: checkpoint saved in %s; continue with --resume "
                        "(exit code %d)",
                        signal.Signals(stop_now).name,
                        step,
                        cfg.max_steps,
                        path,
                        result.exit_code,
                    )
                break
    bar.close()
    result.step = step
    if not result.stopped_by_signal:
        if evaluate is not None:
            values = evaluate(model, step)
            metrics.write(step, values)
            result.metrics.append({"step": step, **values})
        result.final_dir = out / "final"
        save_checkpoint(result.final_dir, model, wrapped, None, {}, cfg, env)
    metrics.close()
    if env.main and metrics.path.is_file():
        plot_losses(metrics.path, out / "loss.png")
    return result


def validation_loss(batch_at: Callable[[int], Any], n_batches: int, device: torch.device):
    """An ``evaluate`` callback for ``train``: the mean loss per target over validation batches ``batch_at(0..n-1)``
    (the same batches every time), in eval mode."""

    @torch.no_grad()
    def evaluate(model: MetaLM, step: int) -> dict[str, float]:
        was = model.training
        model.eval()
        total, n = 0.0, 0
        for i in range(n_batches):
            batch = batch_at(i).to(device)
            out = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
            total += float(out.loss) * out.n_targets
            n += out.n_targets
        model.train(was)
        return {"val_loss": total / max(n, 1)}

    return evaluate
