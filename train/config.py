"""Training configuration: one dataclass whose field help strings are the CLI's ``--help``.

Values come from, in order: the dataclass defaults, a named config (``--config tiny``) or a YAML file
(``--config run.yaml``), then ``--field value`` flags. The resolved config is saved in the run directory.
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


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    preset: str = _f("tiny", "model preset (tiny, tiny-gpt: its decoder alone, language-xl, vl-medium)")
    model: dict = _f({}, "decoder field overrides for the preset, e.g. {n_layers: 6} (YAML or JSON)")
    init_from: str = _f("", "start from this MetaLM checkpoint directory instead of random weights")
    # data
    world: str = _f("data/world", "bundled world directory; generated there if missing")
    text_shards: str = _f("", "text shards (brace pattern, glob or directory); default: built from the world")
    image_shards: str = _f("", "image-text shards; default: built from the world")
    tokenizer: str = _f("", "tokenizer directory (tokenizer.json); default: a BPE trained on the world's corpus")
    vocab_size: int = _f(2048, "vocabulary size when a tokenizer is trained")
    seq_len: int = _f(256, "tokens per training sequence")
    batch_size: int = _f(16, "sequences per micro-batch on each process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    text_weight: float = _f(0.3, "share of each batch's rows drawn from text documents (the rest image-text)")
    span_ratio: float = _f(0.25, "share of text tokens sent through the text encoder as semi-causal spans")
    span_min: int = _f(0, "minimum span length (0: the paper's 64 scaled to seq_len/2048)")
    span_max: int = _f(0, "maximum span length (0: the paper's 128 scaled to seq_len/2048)")
    prefix_max: float = _f(0.5, "image-text: the encoded caption prefix is up to this share of the caption")
    shuffle_buffer: int = _f(512, "samples held in the shuffle buffer")
    num_workers: int = _f(
        0,
        "DataLoader worker processes that read, decode, tokenize and collate training batches beside the training "
        "step (0: in the training process); the batch order depends on it, so resume with the same number",
    )
    prefetch_factor: int = _f(2, "batches each DataLoader worker builds ahead (with --num_workers)")
    vision_warmup_steps: int = _f(
        200,
        "supervised warm-up of the vision encoder on the world's scene labels "
        "(colour and shape per slot) before docking; the warmed-up encoder is then frozen "
        "(0: off, train it from scratch through the captions)",
    )
    # optimisation
    max_steps: int = _f(480, "optimizer steps to train for")
    lr: float = _f(2e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate as a share of the peak")
    warmup_steps: int = _f(50, "linear warm-up steps")
    schedule: str = _f("cosine", "learning-rate decay after warm-up", choices=("cosine", "linear", "constant"))
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only; biases, norms and gains are not decayed)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    # systems
    precision: str = _f("auto", "bf16 autocast on CUDA and fp32 on CPU (auto), or force fp32 / bf16",
                        choices=("auto", "fp32", "bf16"))  # fmt: skip
    dist: str = _f("ddp", "data parallelism under torchrun: ddp or fsdp (sharded, for models that do not fit)",
                   choices=("ddp", "fsdp"))  # fmt: skip
    activation_checkpointing: bool = _f(False, "recompute decoder blocks in the backward pass to save memory")
    compile: bool = _f(False, "torch.compile the model")
    compile_backend: str = _f(
        "inductor",
        "torch.compile backend with --compile: inductor generates fused kernels (on CPU it needs a C++ compiler); "
        "aot_eager traces forward and backward without generating code (for debugging a compile problem)",
    )
    seed: int = _f(0, "seed for weights, data order and spans")
    # checkpoints and logs
    out: str = _f("runs/tiny", "run directory: config, checkpoints, metrics, plots")
    ckpt_every: int = _f(200, "save a checkpoint every N steps (and always at the end)")
    keep_last: int = _f(2, "checkpoints to keep")
    resume: bool = _f(False, "continue from the latest checkpoint in --out")
    log_every: int = _f(10, "log metrics every N steps")
    eval_every: int = _f(200, "validation every N steps (0: only at the end)")
    eval_batches: int = _f(8, "validation batches per evaluation")
    max_nan_steps: int = _f(5, "stop after this many consecutive steps with a NaN or inf loss")
    peak_flops: float = _f(0.0, "FLOP/s for MFU (0: measure a large matmul at start-up)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def load_config_source(source: str, cls: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
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


def build_parser(description: str, cls: type[TrainConfig] = TrainConfig, defaults: dict | None = None):
    # each help names its field's real default itself: the flags default to None (meaning "not given")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="tiny",
                        help=f"named config ({', '.join(NAMED)}) or a YAML file (default: tiny)")  # fmt: skip
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (defaults or {}).get(f.name, default)
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


def parse_config(
    argv: list[str] | None = None,
    description: str = "",
    cls: type[TrainConfig] = TrainConfig,
    defaults: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (the dataclass's, then ``defaults``: a script's own, e.g. finetuning's shorter schedule), then
    --config, then flags; values are checked against their field's choices. ``cls`` may extend TrainConfig with a
    script's own fields."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # boolean switches may be given bare (--resume means --resume=true) or with a value (--resume false)
    bools = {f"--{f.name}" for f in dataclasses.fields(cls) if f.type == "bool"}
    literals = {"1", "0", "true", "false", "yes", "no", "on", "off"}
    argv = [f"{a}=true" if a in bools and (i + 1 == len(argv) or argv[i + 1].lower() not in literals) else a
            for i, a in enumerate(argv)]  # fmt: skip
    args = build_parser(description, cls, defaults).parse_args(argv)
    values = {**(defaults or {}), **load_config_source(args.config, cls)}
    for f in dataclasses.fields(cls):
        flag = getattr(args, f.name)
        if flag is not None:
            values[f.name] = flag
    config = cls(**values)
    check_config(config)
    return config


def check_config(config: TrainConfig) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name} = {getattr(config, f.name)!r}: expected one of {', '.join(choices)}")
    for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "keep_last", "prefetch_factor"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} = {getattr(config, name)}: expected at least 1")
    if config.num_workers < 0:
        raise ValueError(f"num_workers = {config.num_workers}: expected 0 (no workers) or more")
    if not 0.0 <= config.text_weight <= 1.0:
        raise ValueError(f"text_weight = {config.text_weight}: expected a share between 0 and 1")
