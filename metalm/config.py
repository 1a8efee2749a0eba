"""Dataclass configs for the decoder, connectors and the whole MetaLM; their docstrings double as CLI help."""

from __future__ import annotations

import dataclasses
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


@dataclass
class MetaLMConfig:
    """A decoder plus named encoders, e.g. ``{"vision": ..., "text": ...}``."""

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "metalm", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MetaLMConfig:
        """Build from ``to_dict`` output; unknown or missing fields raise ValueError naming ``source``."""
        try:
            decoder = DecoderConfig(**data["decoder"])
            encoders = {}
            for name, enc in data.get("encoders", {}).items():
                enc = dict(enc)
                connector = ConnectorConfig(**enc.pop("connector", {}))
                encoders[name] = EncoderConfig(connector=connector, **enc)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: not a MetaLM config ({err})") from err
        return cls(decoder=decoder, encoders=encoders)


def eager_checks() -> bool:
    """Whether to run the input checks that read tensor values (``int(x.max())``): they give clear errors in eager
    mode but would break a ``torch.compile`` graph into pieces, so compiled code skips them."""
    return not torch.compiler.is_compiling()
