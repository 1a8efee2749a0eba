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
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.flags import FlagParser


def option(default: Any, help: str, **kw) -> Any:
    """A config field whose ``help`` is its flag's help. Its allowed values, checked by ``LoopConfig.check``:
    ``choices=(...)``, or a range: ``min``/``max`` (inclusive), ``above``/``below`` (exclusive)."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class LoopConfig:
    """What the shared training loop (train/loop.py) reads: optimisation, systems, checkpoints and logs."""

    # optimisation
    max_steps: int = option(480, "optimizer steps to train for", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    lr: float = option(2e-3, "peak learning rate", above=0)
    min_lr_ratio: float = option(0.1, "final learning rate as a share of the peak", min=0, max=1)
    warmup_steps: int = option(50, "linear warm-up steps", min=0)
    schedule: str = option("cosine", "learning-rate decay after warm-up", choices=("cosine", "linear", "constant"))
    weight_decay: float = option(
        0.1, "AdamW weight decay (matrices only; biases, norms and gains are not decayed)", min=0
    )
    beta1: float = option(0.9, "AdamW beta1", min=0, below=1)
    beta2: float = option(0.95, "AdamW beta2", min=0, below=1)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: off)", min=0)
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
    ckpt_every: int = option(200, "save a checkpoint every N steps (and always at the end)", min=1)
    keep_last: int = option(2, "checkpoints to keep", min=1)
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    log_every: int = option(10, "log metrics every N steps", min=1)
    eval_every: int = option(200, "validation every N steps (0: only at the end)", min=0)
    max_nan_steps: int = option(5, "stop after this many consecutive steps with a NaN or inf loss", min=1)
    peak_flops: float = option(
        0.0,
        "FLOP/s for MFU (0: the fastest of several large matmuls timed at start-up); set it when other processes "
        "share the machine, since a busy core makes the measured peak too low and MFU too high",
        min=0,
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
        """Raise a ``ConfigError`` naming the first field whose value has the wrong type or lies outside what its
        ``option`` allows; jobs add the rules that relate fields (calling this first)."""
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))


class ConfigError(ValueError):
    """A config field's value is not allowed; ``field`` names it (so the parser can name the YAML file it came
    from)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_KINDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a finite number",
    "str": "a string",
    "dict": "a mapping",
}


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _has_type(kind: str, value: Any) -> bool:
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str, "dict": dict}[kind])


def _allowed_range(meta: Any) -> str:
    """The range an ``option``'s metadata declares, in words ("" when none)."""
    words = {"min": "at least", "max": "at most", "above": "above", "below": "below"}
    return " and ".join(f"{words[k]} {meta[k]}" for k in words if k in meta)


def _in_range(meta: Any, value: float) -> bool:
    return (
        meta.get("min", value) <= value <= meta.get("max", value)
        and value > meta.get("above", value - 1)
        and value < meta.get("below", value + 1)
    )


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Raise a ``ConfigError`` unless ``value`` has ``f``'s type and lies in its declared choices or range."""
    kind = _type_name(f)
    if not _has_type(kind, value):
        raise ConfigError(f.name, f"{f.name} = {value!r}: expected {_KINDS[kind]}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f.name, f"{f.name} = {value!r}: expected one of {', '.join(choices)}")
    bounds = _allowed_range(f.metadata)
    if bounds and not _in_range(f.metadata, value):
        raise ConfigError(f.name, f"{f.name} = {value!r}: expected {bounds}")


NAMED: dict[str, dict[str, Any]] = {
    "tiny": {},
}

BOOL_LITERALS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _parse_value(f: dataclasses.Field, text: str) -> Any:
    """A flag's text as the value of field ``f`` (ArgumentTypeError naming the flag when it is not one)."""
    kind = _type_name(f)
    if kind == "bool":
        if text.lower() in BOOL_LITERALS:
            return BOOL_LITERALS[text.lower()]
        raise argparse.ArgumentTypeError(f"--{f.name}: expected true or false, got {text!r}")
    if kind == "dict":
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"--{f.name}: expected a mapping like '{{n_layers: 6}}', got {text!r}")
        return value
    try:
        return {"int": int, "float": float, "str": str}[kind](text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--{f.name}: expected {kind}, got {text!r}") from err


def _yaml_value(f: dataclasses.Field, value: Any, path: Path) -> Any:
    """A YAML file's value for field ``f`` by the flags' rules: text is parsed as the flag's text would be (so
    ``resume: "no"`` is false and ``max_steps: "ten"`` an error), an int is also a float, and a YAML boolean or
    number given for a text field is the text a flag would give (``encode_input: true`` is ``"true"``)."""
    kind = _type_name(f)
    if isinstance(value, str) and kind != "str":
        try:
            return _parse_value(f, value)
        except argparse.ArgumentTypeError:
            raise ConfigError(f.name, f"{path}: {f.name} = {value!r}: expected {_KINDS[kind]}") from None
    if kind == "str" and isinstance(value, bool):
        return str(value).lower()
    if kind == "str" and isinstance(value, int | float):
        return str(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not _has_type(kind, value):
        raise ConfigError(f.name, f"{path}: {f.name} = {value!r}: expected {_KINDS[kind]}")
    return value


def load_config_source(source: str, cls: type[LoopConfig]) -> dict[str, Any]:
    """Field values from a named config or a YAML file, read by the flags' rules; an unknown key or a value of the
    wrong type is an error naming the file and the field."""
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown config fields {unknown}; see --help for the fields")
    return {name: _yaml_value(fields[name], value, path) for name, value in data.items()}


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
            + (f"; one of {', '.join(f.metadata['choices'])}" if "choices" in f.metadata else "")
            + (f"; {_allowed_range(f.metadata)}" if _allowed_range(f.metadata) else ""),
        )
    return parser


def parse_config(argv: list[str] | None, cls: type[LoopConfig], description: str = "") -> Any:
    """A ``cls`` from its defaults, then --config, then flags; checked by ``cls.check`` (an error about a value
    that came from a YAML file names the file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # boolean switches may be given bare (--resume means --resume=true) or with a value (--resume false)
    bools = {f"--{f.name}" for f in dataclasses.fields(cls) if f.type == "bool"}
    bools |= {"--" + name[2:].replace("_", "-") for name in bools}  # the deprecated hyphenated spelling too
    argv = [
        f"{a}=true" if a in bools and (i + 1 == len(argv) or argv[i + 1].lower() not in BOOL_LITERALS) else a
        for i, a in enumerate(argv)
    ]
    args = build_parser(description, cls).parse_args(argv)
    values = load_config_source(args.config, cls)
    from_file = set(values)
    for f in dataclasses.fields(cls):
        flag = getattr(args, f.name)
        if flag is not None:
            values[f.name] = flag
            from_file.discard(f.name)
    config = cls(**values)
    try:
        config.check()
    except ConfigError as err:
        if err.field in from_file and args.config not in NAMED:
            raise ConfigError(err.field, f"{args.config}: {err}") from None
        raise
    return config
