"""Bidirectional encoders that dock into the MetaLM interface decoder."""

from .base import Encoder, EncoderOutput, apply_freeze
from .joint import JointVisionLanguageEncoder
from .registry import ENCODER_KINDS, build_encoder, encoder_spec
from .text import HFTextEncoder, NativeTextEncoder, minilm_path
from .vision import OpenClipVision, TimmVision

__all__ = [
    "ENCODER_KINDS",
    "Encoder",
    "EncoderOutput",
    "HFTextEncoder",
    "JointVisionLanguageEncoder",
    "NativeTextEncoder",
    "OpenClipVision",
    "TimmVision",
    "apply_freeze",
    "build_encoder",
    "encoder_spec",
    "minilm_path",
]
