"""MetaLM: a causal language model as a general-purpose interface to bidirectional encoders."""

from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig
from metalm.decoder import Decoder, DecoderOutput
from metalm.docking import Dock
from metalm.model import MetaLM, MetaLMOutput

__all__ = [
    "ConnectorConfig",
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "Dock",
    "EncoderConfig",
    "MetaLM",
    "MetaLMConfig",
    "MetaLMOutput",
]
