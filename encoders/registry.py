"""Build encoders by kind name, and describe a built one so that the same architecture can be rebuilt."""

from __future__ import annotations

from typing import Any

from .base import Encoder
from .joint import JointVisionLanguageEncoder
from .text import HFTextEncoder, NativeTextEncoder
from .vision import OpenClipVision, TimmVision

ENCODER_KINDS: dict[str, type[Encoder]] = {
    "open_clip": OpenClipVision,
    "timm": TimmVision,
    "hf_text": HFTextEncoder,
    "native_text": NativeTextEncoder,
    "joint_vl": JointVisionLanguageEncoder,
}


def build_encoder(kind: str, **kwargs: Any) -> Encoder:
    """Construct the encoder of ``kind`` from its constructor kwargs (for ``hf_text``: ``path`` or ``config``)."""
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; known kinds: {', '.join(ENCODER_KINDS)}")
    return ENCODER_KINDS[kind](**kwargs)


def encoder_spec(encoder: Encoder) -> dict[str, Any]:
    """JSON-able ``{"kind": ..., **kwargs}`` such that ``build_encoder(**spec)`` rebuilds the same architecture with
    random weights and without the original files (load the saved state dict into it)."""
    for kind, cls in ENCODER_KINDS.items():
        if isinstance(encoder, cls):  # FSDP2 swaps in a subclass, so not `type(...) is`
            return {"kind": kind, **encoder.extra_state()}
    raise ValueError(f"{type(encoder).__name__} is not a registered encoder class ({', '.join(ENCODER_KINDS)})")
