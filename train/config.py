"""Training configuration: the shared loop's dataclass and the parser every job's config goes through.

Each job's config (``train.pretraining.PretrainConfig``, ``train.finetuning.FinetuneConfig``,
``train.instruction_tuning.InstructConfig``) extends ``LoopConfig`` with the fields that job reads, so a script's
``--help`` lists only those; each field's help string is its flag's help. Values come from, in order: the
dataclass defaults, a named config (``--config tiny``) or a YAML file (``--config run.yaml``), then ``--field
value`` flags. The training loop saves the resolved config in the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.flags import FlagParser


def option(default: Any, help: str, **kw) -> Any:
    """A config field whose ``help`` is its flag's help; ``choices=(...)`` limits its values."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class LoopConfig:
    """What the shared training loop (train/loop.py) reads: optimisation, systems, checkpoints and logs."""

    # optimisation
    max_steps: int = option(480, "optimizer steps to train for")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(2e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a share of the peak")
    warmup_steps: int = option(50, "linear warm-up steps")
    schedule: str = option("cosine", "learning-rate decay after warm-up", choices=("cosine", "linear", "constant"))
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only; biases, norms and gains are not decayed)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: off)")
    # systems
    precision: str = option(
        "auto", "bf16 autocast on CUDA and fp32 on CPU (auto), or force fp32 / bf16", choices=("auto", "fp32", "bf16")
    )
    dist: str = option(
        "ddp",
        "data parallelism under torchrun: ddp or fsdp (sharded, for models that do not fit)",
        choices=("ddp", "fsdp"),
    )
    activation_checkpointing: bool = option(False, "recompute decoder blocks in the backward pass to save memory")
    compile: bool = option(False, "torch.compile the model")
    compile_backend: str = option(
        "inductor",
        "torch.compile backend with --compile: inductor generates fused kernels (on CPU it needs a C++ compiler); "
        "aot_eager traces forward and backward without generating code (for debugging a compile problem)",
    )
    # checkpoints and logs
    out: str = option("runs/tiny", "run directory: config, checkpoints, metrics, plots")
    ckpt_every: int = option(200, "save a checkpoint every N steps (and always at the end)")
    keep_last: int = option(2, "checkpoints to keep")
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    log_every: int = option(10, "log metrics every N steps")
    eval_every: int = option(200, "validation every N steps (0: only at the end)")
    max_nan_steps: int = option(5, "stop after this many consecutive steps with a NaN or inf loss")
    peak_flops: float = option(
        0.0,
        "FLOP/s for MFU (0: the fastest of several large matmuls timed at start-up); set it when other processes "
        "share the machine, since a busy core makes the measured peak too low and MFU too high",
    )

    def __init_subclass__(cls, defaults: dict[str, Any] | None = None, **kw) -> None:
        """``class Job(LoopConfig, defaults={"max_steps": 300})``: a job's own defaults for inherited fields (e.g.
        finetuning's shorter schedule), with their help strings; ``@dataclass`` then makes them the defaults."""
        super().__init_subclass__(**kw)
        annotations = cls.__dict__.get("__annotations__")
        if annotations is None:
            annotations = cls.__annotations__ = {}
        for name, default in (defaults or {}).items():
            inherited = cls.__dataclass_fields__[name]
            annotations[name] = inherited.type
            setattr(cls, name, option(default, **inherited.metadata))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise a ValueError naming the first field whose value cannot work."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} = {getattr(self, f.name)!r}: expected one of {', '.join(choices)}")
        for name in ("grad_accum", "max_steps", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: expected at least 1")


NAMED: dict[str, dict[str, Any]] = {
    "tiny": {},
}


def _parse_value(f: dataclasses.Field, text: str) -> Any:
    if f.type in ("bool", bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"--{f.name}: expected true or false, got {text!r}")
    if f.type in ("dict", dict):
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"--{f.name}: expected a mapping like '{{n_layers: 6}}', got {text!r}")
        return value
    kind = {"int": int, "float": float, "str": str}[f.type] if isinstance(f.type, str) else f.type
    try:
        return kind(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--{f.name}: expected {kind.__name__}, got {text!r}") from err


def load_config_source(source: str, cls: type[LoopConfig]) -> dict[str, Any]:
    """Field values from a named config or a YAML file; unknown keys are an error naming the file."""
    if source in NAMED:
        return dict(NAMED[source])
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"--config {source}: neither a named config ({', '.join(NAMED)}) nor a file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config fields {unknown}; see --help for the fields")
    return data


def build_parser(description: str, cls: type[LoopConfig]) -> FlagParser:
    """One flag per field of ``cls`` (plus ``--config``); each help names its field's real default itself, since
    the flags default to None (meaning "not given")."""
    parser = FlagParser(description=description)
    parser.add_argument(
        "--config", default="tiny", help=f"named config ({', '.join(NAMED)}) or a YAML file (default: tiny)"
    )
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(
            f"--{f.name}",
            type=lambda text, f=f: _parse_value(f, text),
            default=None,
            metavar=f.type.upper() if isinstance(f.type, str) else None,
            choices=None,
            help=f"{f.metadata['help']} (default: {json.dumps(default)})"
            + (f"; one of {', '.join(f.metadata['choices'])}" if "choices" in f.metadata else ""),
        )
    return parser


def parse_config(argv: list[str] | None, cls: type[LoopConfig], description: str = "") -> Any:
    """A ``cls`` from its defaults, then --config, then flags; checked by ``cls.check``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # boolean switches may be given bare (--resume means --resume=true) or with a value (--resume false)
    bools = {f"--{f.name}" for f in dataclasses.fields(cls) if f.type == "bool"}
    bools |= {"--" + name[2:].replace("_", "-") for name in bools}  # the deprecated hyphenated spelling too
    literals = {"1", "0", "true", "false", "yes", "no", "on", "off"}
    argv = [
        f"{a}=true" if a in bools and (i + 1 == len(argv) or argv[i + 1].lower() not in literals) else a
        for i, a in enumerate(argv)
    ]
    args = build_parser(description, cls).parse_args(argv)
    values = load_config_source(args.config, cls)
    for f in dataclasses.fields(cls):
        flag = getattr(args, f.name)
        if flag is not None:
            values[f.name] = flag
    config = cls(**values)
    config.check()
    return config
