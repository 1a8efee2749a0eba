"""Dataclass configs for the decoder, connectors and the whole MetaLM; their docstrings double as CLI help."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

POSITIONS = ("sinusoidal", "learned", "rotary")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "xformers", "momentum")
CONNECTORS = ("linear", "mlp", "resampler")


def _check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} = {value!r}: expected one of {', '.join(choices)}")


@dataclass
class DecoderConfig:
    """The causal interface decoder: a pre-norm transformer with GPT-2 or Llama style options."""

    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    head_dim: int | None = None  # None means dim // n_heads
    mlp_hidden: int | None = None  # None: 4*dim for gelu, 8/3*dim rounded up to 64 for swiglu
    max_seq_len: int = 1024
    positions: str = "learned"  # sinusoidal (paper) | learned (GPT-2) | rotary (Llama)
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # gelu | swiglu
    gelu_approximate: str = "tanh"  # tanh (GPT-2's gelu_new) | none
    attn_bias: bool = True  # biases on the q/k/v and output projections
    mlp_bias: bool = True
    tie_embeddings: bool = True
    attention: str = "auto"  # auto (xformers on CUDA when importable, else sdpa) | sdpa | eager | xformers | momentum
    momentum_eta: float = 0.9  # MoAttn decay: m_t = eta * (m_{t-1} + v_{t-1})
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _check_choice("decoder", "positions", self.positions, POSITIONS)
        _check_choice("decoder", "norm", self.norm, NORMS)
        _check_choice("decoder", "mlp", self.mlp, MLPS)
        _check_choice("decoder", "attention", self.attention, ATTENTION_BACKENDS)
        _check_choice("decoder", "gelu_approximate", self.gelu_approximate, ("tanh", "none"))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"decoder.dim = {self.dim} is not divisible by decoder.n_heads = {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"decoder.n_heads = {self.n_heads} is not a multiple of decoder.n_kv_heads = {self.n_kv_heads}"
            )
        if self.mlp_hidden is None:
            if self.mlp == "gelu":
                self.mlp_hidden = 4 * self.dim
            else:
                self.mlp_hidden = -(-int(8 * self.dim / 3) // 64) * 64
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if not 0.0 < self.momentum_eta < 1.0:
            raise ValueError(f"decoder.momentum_eta = {self.momentum_eta}: expected a value in (0, 1)")


@dataclass
class ConnectorConfig:
    """Maps encoder vectors into the decoder's embedding space."""

    kind: str = "linear"  # linear (paper, language) | mlp (paper, vision) | resampler (learned queries)
    layers: int = 3  # mlp: number of linear layers
    queries: int = 64  # resampler: number of output vectors per segment
    heads: int = 4  # resampler: attention heads
    depth: int = 2  # resampler: cross-attention layers

    def __post_init__(self) -> None:
        _check_choice("connector", "kind", self.kind, CONNECTORS)
        if self.layers < 1:
            raise ValueError(f"connector.layers = {self.layers}: expected at least 1")


@dataclass
class EncoderConfig:
    """One docked encoder: its kind and build arguments (see ``encoders.build_encoder``), freeze policy, connector."""

    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    freeze: str = "none"  # none | all | all_but_last_N
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    tokenizer: str = ""  # the name of the encoder's own tokenizer, saved in tokenizers/<encoder>/ ("": none)


@dataclass
class MetaLMConfig:
    """A decoder plus named encoders, e.g. ``{"vision": ..., "text": ...}``."""

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "metalm", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> MetaLMConfig:
        """Build from ``to_dict`` output; a value that is not an object, an unknown, missing or mistyped field, or a
        field the config rejects raises ValueError naming ``source``, the field and what was expected."""
        fields = _checked_fields(cls, data, source, "", strict=False)
        if "decoder" not in fields:
            raise ValueError(f"{source}: not a MetaLM config (missing field 'decoder'; expected an object)")
        decoder = _checked_fields(DecoderConfig, fields["decoder"], source, "decoder")
        encoders = {}
        for name, enc in fields.get("encoders", {}).items():
            enc = _checked_fields(EncoderConfig, enc, source, f"encoders.{name}")
            where = f"encoders.{name}.connector"
            encoders[name] = (enc, _checked_fields(ConnectorConfig, enc.pop("connector", {}), source, where))
        try:
            return cls(
                decoder=DecoderConfig(**decoder),
                encoders={n: EncoderConfig(connector=ConnectorConfig(**c), **e) for n, (e, c) in encoders.items()},
            )
        except (ValueError, TypeError) as err:
            raise ValueError(f"{source}: not a MetaLM config ({err})") from err


def _checked_fields(kind: type, data: Any, source: str, where: str, strict: bool = True) -> dict[str, Any]:
    """``data`` as the fields of dataclass ``kind``: an object whose keys are its fields (other keys are an error
    when ``strict``, else left out: the top level holds ``model_type``), each value of the field's declared type
    (nested configs are checked by the caller)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {where or 'the config'} is a JSON {type(data).__name__}; expected an object")
    hints = typing.get_type_hints(kind)
    fields = {k: v for k, v in data.items() if strict or k in hints}
    unknown = sorted(set(fields) - set(hints))
    if unknown:
        raise ValueError(f"{source}: not a MetaLM config (unknown field(s) {unknown} in {where})")
    for name, value in fields.items():
        hint = hints[name]
        if not _matches(value, hint):
            field_name = f"{where}.{name}" if where else name
            raise ValueError(f"{source}: {field_name} is {value!r}; expected {_describe(hint)}")
    return fields


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the declared type (bool is no int; an int is a float)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is Any:
        return True
    if dataclasses.is_dataclass(origin):
        return isinstance(value, dict)  # its fields are checked on their own
    if isinstance(value, bool) and origin is not bool:
        return False
    if origin is float:
        return isinstance(value, int | float)
    if origin is dict:
        value_type = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return isinstance(value, dict) and all(_matches(v, value_type) for v in value.values())
    return isinstance(value, origin)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(origin):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}.get(
        origin, getattr(origin, "__name__", str(origin))
    )


def eager_checks() -> bool:
    """Whether to run the input checks that read tensor values (``int(x.max())``): they give clear errors in eager
    mode but would break a ``torch.compile`` graph into pieces, so compiled code skips them."""
    return not torch.compiler.is_compiling()
