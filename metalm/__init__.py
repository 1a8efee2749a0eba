"""MetaLM: a causal language model as a general-purpose interface to bidirectional encoders."""

from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig
from metalm.decoder import Decoder, DecoderOutput

__all__ = ["ConnectorConfig", "Decoder", "DecoderConfig", "DecoderOutput", "EncoderConfig", "MetaLMConfig"]
