"""MetaLM: named bidirectional encoders dock, through connectors, into the causal interface decoder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
from torch import nn

from encoders import Encoder, apply_freeze, build_encoder, encoder_spec
from encoders.base import OWN_IDS
from encoders.tokenization import DECODER_TOKENIZER, TextTokenizer, save_tokenizer_json
from metalm.config import EncoderConfig, MetaLMConfig, eager_checks
from metalm.connectors import build_connector
from metalm.decoder import Decoder
from metalm.docking import Dock, docked_mask, scatter_docked
from metalm.generation import generate
from metalm.hf import load_decoder
from metalm.io import atomic_write_dir, atomic_write_text, read_json, save_safetensors_atomic
from metalm.loss import causal_lm_loss, fused_linear_cross_entropy
from metalm.presets import PRESETS, get_preset
from metalm.semicausal import semicausal_labels
from metalm.spec import (
    SpecError,
    decoder_config,
    decoder_tokenizer_dir,
    grow_vocab,
    metalm_config,
    pretrained_decoder_dir,
    read_spec_file,
    resolve_spec,
    runtime_fields,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"  # the decoder's
TOKENIZERS_DIR = "tokenizers"  # tokenizers/<encoder>/tokenizer.json: encoders' own
SPEC_NAME = "spec.json"
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "generation_config.json")
"""A pretrained decoder's tokenizer files that checkpoints keep beside tokenizer.json (a chat model's template)."""


@dataclass
class MetaLMOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None for a training forward (see MetaLM.forward)
    loss: torch.Tensor | None = None  # mean cross-entropy over the semi-causal targets
    labels: torch.Tensor | None = None  # the labels actually trained on (docked positions and padding ignored)
    n_targets: int = 0


class MetaLM(nn.Module):
    """Decoder + encoders + connectors. ``forward(input_ids, docks, labels)`` applies the semi-causal objective."""

    def __init__(
        self, config: MetaLMConfig, encoders: dict[str, Encoder] | None = None, decoder: Decoder | None = None
    ) -> None:
        """Build every part of ``config`` with random weights, except ``encoders`` (by name) and ``decoder`` given
        already built (pretrained); ``decoder`` must have ``config.decoder``'s shape."""
        super().__init__()
        self.config = config
        if decoder is not None and decoder.cfg != config.decoder:
            raise ValueError("the given decoder's config differs from config.decoder")
        self.decoder = decoder if decoder is not None else Decoder(config.decoder)
        self.spec: dict | None = None  # the model spec it was built from (metalm.spec), saved as spec.json
        self.decoder_tokenizer: tokenizers.Tokenizer | None = None  # saved as tokenizer.json when set
        self.tokenizer_files: dict[str, str] = {}  # the decoder tokenizer's other files (its chat template, ...)
        self.encoders = nn.ModuleDict()
        self.connectors = nn.ModuleDict()
        given = encoders or {}
        unknown = set(given) - set(config.encoders)
        if unknown:
            raise ValueError(f"encoders {sorted(unknown)} are not in the config's encoders {sorted(config.encoders)}")
        for name, ec in config.encoders.items():
            enc = given[name] if name in given else build_encoder(ec.kind, **ec.kwargs)
            self.encoders[name] = enc
            self.connectors[name] = build_connector(ec.connector, enc.output_dim, config.decoder.dim)
        self.apply_freeze()

    def apply_freeze(self) -> None:
        """Apply each encoder's freeze policy from the config (decoder and connectors stay trainable)."""
        for name, ec in self.config.encoders.items():
            apply_freeze(self.encoders[name], ec.freeze)

    @classmethod
    def from_preset(cls, name: str, **decoder_overrides) -> MetaLM:
        """Build a named preset without pretrained parts (``tiny``, ``language-xl``, ...) with random weights."""
        return cls(get_preset(name, **decoder_overrides))

    @classmethod
    def from_spec(
        cls, spec: dict | str, vocab_size: int | None = None, max_seq_len: int | None = None
    ) -> tuple[MetaLM, Path | None]:
        """A model from a spec (a dict, see ``metalm.spec``, or a preset name) with its pretrained parts loaded, and
        the directory of the decoder's tokenizer (None for a fresh decoder).

        ``vocab_size`` is the decoder tokenizer's size: a fresh decoder gets it, a pretrained one grows to it
        (MetaLM's special tokens appended to its tokenizer, see ``spec.grow_vocab``). ``max_seq_len`` sets a fresh
        decoder's length and must fit a pretrained one's. Parts are built in order (decoder, then encoders) from
        the global torch RNG: seed it for the same random weights every time."""
        resolved = resolve_spec({"preset": spec} if isinstance(spec, str) else spec, PRESETS)
        pretrained = pretrained_decoder_dir(resolved)
        if pretrained is None:
            overrides = {"max_seq_len": max_seq_len} if max_seq_len else {}
            model = cls(metalm_config(resolved, decoder_config(resolved, vocab_size, **overrides)))
        else:
            decoder = load_decoder(pretrained).train()
            runtime = runtime_fields(resolved, decoder.cfg)
            # set on the config object every block shares
            decoder.cfg.attention, decoder.cfg.momentum_eta = runtime.attention, runtime.momentum_eta
            if vocab_size is not None:
                grow_vocab(decoder, vocab_size)
            if max_seq_len is not None and max_seq_len > decoder.cfg.max_seq_len:
                raise SpecError(
                    f"seq_len = {max_seq_len}: longer than the pretrained decoder's {decoder.cfg.max_seq_len} "
                    f"positions ({pretrained})"
                )
            model = cls(metalm_config(resolved, decoder.cfg), decoder=decoder)
        model.spec = resolved
        tokenizer_dir = decoder_tokenizer_dir(resolved)
        if tokenizer_dir is not None:
            model.tokenizer_files = read_tokenizer_files(tokenizer_dir)
        return model, tokenizer_dir

    def embed_inputs(self, input_ids: torch.Tensor, docks: list[Dock] | None = None) -> torch.Tensor:
        """Decoder input embeddings with every dock's encoder vectors written over their placeholder positions."""
        embeds = self.decoder.embed(input_ids)
        if not docks:
            return embeds
        b, t = input_ids.shape
        claimed = 0
        for dock in docks:
            if dock.encoder not in self.encoders:
                raise ValueError(f"dock names encoder {dock.encoder!r}; this model has {sorted(self.encoders)}")
            check_dock_tokenizer(dock, self.encoders[dock.encoder])
            out = self.encoders[dock.encoder](dock.inputs)
            vectors, mask = self.connectors[dock.encoder](out.hidden_states, out.mask)
            embeds = scatter_docked(embeds, dock, vectors, mask)
            claimed += int((dock.positions >= 0).sum()) if eager_checks() else 0
        if eager_checks() and claimed != int(docked_mask(docks, b, t, input_ids.device).sum()):
            raise ValueError("two docked segments claim the same decoder position; each position takes one vector")
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        docks: list[Dock] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool | None = None,
    ) -> MetaLMOutput:
        """Logits, and with ``labels`` (aligned to ``input_ids``) the semi-causal loss: docked positions are never
        targets, whatever ``labels`` holds there, so no prediction can target a token its input has seen.

        With labels the loss is computed by the fused chunked cross-entropy and no logits are returned unless
        ``return_logits=True`` (then the loss comes from the full logits; the value is the same)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected (batch, seq)")
        embeds = self.embed_inputs(input_ids, docks)
        if return_logits is None:
            return_logits = labels is None
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, compute_logits=return_logits)
        logits = out.logits
        if labels is None:
            return MetaLMOutput(logits)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}; expected {tuple(input_ids.shape)}")
        docked = docked_mask(docks or [], *input_ids.shape, input_ids.device)
        labels = semicausal_labels(labels, docked, attention_mask)
        if return_logits:
            loss, n = causal_lm_loss(logits, labels)
        else:
            loss, n = fused_linear_cross_entropy(out.hidden_states, self.decoder.lm_head.weight, labels)
        return MetaLMOutput(logits, loss, labels, n)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        docks: list[Dock] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Continue ``input_ids`` (with docked encoder vectors in the prompt); see ``metalm.generation.generate``."""
        embeds = self.embed_inputs(input_ids, docks)
        return generate(self.decoder, input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def portable_config(self) -> MetaLMConfig:
        """The config with each encoder described by its architecture alone, so loading needs no original files."""
        encoders = {}
        for name, ec in self.config.encoders.items():
            spec = dict(encoder_spec(self.encoders[name]))
            own = getattr(self.encoders[name], "tokenizer", None)
            encoders[name] = EncoderConfig(
                spec.pop("kind"), spec, ec.freeze, ec.connector, own.name if own is not None else ""
            )
        return dataclasses.replace(self.config, encoders=encoders)

    def save_pretrained(self, path: str | Path) -> None:
        """Write everything a copy of ``path`` needs to reload offline anywhere, atomically (the old directory stays
        until done): config.json, model.safetensors, the decoder's tokenizer (when the model holds one), each
        encoder's own tokenizer (tokenizers/<name>/) and the spec it was built from (spec.json)."""
        state = self.state_dict()
        atomic_write_dir(path, lambda tmp: write_pretrained(tmp, self, state))

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MetaLM:
        """Load a directory written by ``save_pretrained``; errors name the file and what was expected."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path}: not a directory; expected a MetaLM checkpoint ({CONFIG_NAME} + {WEIGHTS_NAME})"
            )
        data = read_json(path / CONFIG_NAME, "the MetaLM config written by save_pretrained")
        if not isinstance(data, dict):
            raise ValueError(
                f"{path / CONFIG_NAME}: a JSON {type(data).__name__}; expected an object (a MetaLM config)"
            )
        if data.get("model_type") != "metalm":
            raise ValueError(f"{path / CONFIG_NAME}: model_type is {data.get('model_type')!r}; expected 'metalm'")
        config = MetaLMConfig.from_dict(data, str(path / CONFIG_NAME))
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing; expected the model weights (safetensors)")
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights}: not a readable safetensors file ({err})") from err
        try:
            model = cls(config)
        except (ValueError, RuntimeError) as err:  # values of the right type that no model has (a negative size)
            raise ValueError(f"{path / CONFIG_NAME}: the config does not build a model ({err})") from err
        load_state(model, state, weights)
        for name, enc_config in config.encoders.items():
            if enc_config.tokenizer:
                model.encoders[name].set_tokenizer(
                    TextTokenizer.load(path / TOKENIZERS_DIR / name, name=enc_config.tokenizer)
                )
        if (path / TOKENIZER_NAME).is_file():
            try:
                model.decoder_tokenizer = tokenizers.Tokenizer.from_file(str(path / TOKENIZER_NAME))
            except Exception as err:  # the Rust backend raises a bare Exception for a malformed file
                raise ValueError(f"{path / TOKENIZER_NAME}: not a tokenizers JSON file ({err})") from err
        if (path / SPEC_NAME).is_file():
            model.spec = read_spec_file(path / SPEC_NAME)
        model.tokenizer_files = read_tokenizer_files(path)
        return model.eval()

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def check_dock_tokenizer(dock: Dock, encoder: Encoder) -> None:
    """Refuse a dock whose ids come from another tokenizer than the one ``encoder`` reads, naming both: an encoder
    with its own tokenizer (``OWN_IDS``) reads only that tokenizer's ids, any other only the decoder's."""
    if dock.tokenizer is None or "input_ids" not in dock.inputs:
        return
    own = getattr(encoder, "tokenizer", None) if encoder.reads == OWN_IDS else None
    if encoder.reads == OWN_IDS and own is None:
        return  # an encoder with no tokenizer attached: nothing to compare with
    decoder = f"the decoder's tokenizer ({DECODER_TOKENIZER!r})"
    expected = own.describe() if own is not None else decoder
    given = dock.tokenizer if dock.tokenizer != DECODER_TOKENIZER else decoder
    if given != expected:
        raise ValueError(
            f"encoder {dock.encoder!r} reads ids of tokenizer {expected}, but the dock holds ids of tokenizer {given}"
        )


def write_pretrained(path: Path, model: MetaLM, state: dict[str, torch.Tensor]) -> None:
    """Write ``model``'s checkpoint files with the weights ``state`` (tied output weights stored once) into an
    existing directory: config.json, model.safetensors, and what the model holds of tokenizer.json (the
    decoder's), tokenizers/<encoder>/tokenizer.json (encoders' own) and spec.json."""
    config = model.portable_config()
    if config.decoder.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "decoder.lm_head.weight"}
    atomic_write_text(path / CONFIG_NAME, json.dumps(config.to_dict(), indent=2))
    save_safetensors_atomic(state, path / WEIGHTS_NAME, metadata={"format": "pt", "model_type": "metalm"})
    for name, enc_config in config.encoders.items():
        if enc_config.tokenizer:
            model.encoders[name].tokenizer.save(path / TOKENIZERS_DIR / name)
    if model.decoder_tokenizer is not None:
        save_tokenizer_json(model.decoder_tokenizer, path)
    if model.spec is not None:
        atomic_write_text(path / SPEC_NAME, json.dumps(model.spec, indent=2))
    for name, text in model.tokenizer_files.items():
        atomic_write_text(path / name, text)


def read_tokenizer_files(path: Path) -> dict[str, str]:
    """The decoder tokenizer's files beside tokenizer.json in ``path`` (``TOKENIZER_FILES``: its chat template,
    special tokens and generation defaults), by name."""
    return {name: (path / name).read_text(encoding="utf-8") for name in TOKENIZER_FILES if (path / name).is_file()}


def load_state(model: MetaLM, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights into ``model``, checking names and shapes first so a mismatch names the tensor."""
    expected = model.state_dict()
    if model.config.decoder.tie_embeddings:
        expected.pop("decoder.lm_head.weight")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: weights do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}; the config expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
