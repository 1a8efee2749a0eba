"""The demo's core, shared by the terminal chat and the web page: load a checkpoint, keep a conversation, stream
answers.

One language model is the interface to every encoder: a user turn (words, optionally images) becomes the chat
prompt of ``data.templates.chat_prompt``; its images dock through the vision encoder and its words, by default,
through the text encoder, as MetaLM reads instructions; the decoder writes the answer, streamed token by token,
until ``</s>`` or the end of its line. Everything a user can get wrong (a missing or foreign checkpoint, a broken or
huge image, an empty or overlong instruction, a bad setting) raises ``DemoError`` with a message for the user, so
the front ends show it and carry on.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from data.layout import encoder_sized
from data.prompts import PromptEncoder
from data.templates import CHAT_STOP, Turn, chat_format
from data.tokenizer import FILENAME as TOKENIZER_NAME
from data.tokenizer import Tokenizer
from demo import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, DemoError, Settings, parse_settings
from metalm import MetaLM
from metalm.config import MetaLMConfig
from metalm.io import read_json
from metalm.model import CONFIG_NAME, SPEC_NAME, WEIGHTS_NAME
from metalm.presets import PRESETS, get_preset
from metalm.spec import read_spec_file, resolve_spec

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "Chat",
    "DemoError",
    "Engine",
    "Reply",
    "Settings",
    "check_preset",
    "load_checkpoint",
    "load_image",
    "parse_settings",
]

TextCallback = Callable[[str], None]
# decoder fields a preset fixes; vocab_size and max_seq_len follow the tokenizer and --seq_len when training
_PRESET_DECODER_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "mlp_hidden",
    "positions",
    "norm",
    "mlp",
)
_PRESET_FREE_ENCODER_KWARGS = ("vocab_size", "max_len")


# ---------------------------------------------------------------------------------------------------- images


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """A fully decoded RGB image from a path or uploaded bytes, refused with a message that names it when it is
    missing, unreadable, truncated, over ``MAX_IMAGE_BYTES`` or over ``MAX_IMAGE_PIXELS``. The pixel count is read
    from the header before anything is decoded, so a decompression bomb costs nothing."""
    if isinstance(source, bytes):
        label, size, fp = name or "the uploaded image", len(source), io.BytesIO(source)
    else:
        path = Path(source).expanduser()
        label = name or str(path)
        if not path.is_file():
            raise DemoError(f"{label}: image file not found")
        size, fp = path.stat().st_size, path
    if size > MAX_IMAGE_BYTES:
        raise DemoError(f"{label}: the file is {size / 2**20:.1f} MB; images are limited to {MAX_IMAGE_BYTES >> 20} MB")
    if size == 0:
        raise DemoError(f"{label}: the file is empty; expected an image (PNG, JPEG, ...)")
    too_big = f"images are limited to {MAX_IMAGE_PIXELS / 1e6:g} megapixels"
    try:
        with Image.open(fp) as img:  # reads the header only; PIL itself refuses far larger images here
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DemoError(
                    f"{label}: the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; {too_big}"
                )
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise DemoError(f"{label}: the image is too large to decode safely ({err}); {too_big}") from None
    except DemoError:
        raise
    except UnidentifiedImageError:
        raise DemoError(f"{label}: not an image PIL can read; expected a PNG, JPEG, GIF, BMP or WebP file") from None
    except Exception as err:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise DemoError(f"{label}: not a readable image ({err}); expected a PNG, JPEG, GIF, BMP or WebP file") from None


# ---------------------------------------------------------------------------------------------------- checkpoints


def load_checkpoint(
    path: str | Path,
    preset: str | None = None,
    device: str | torch.device | None = None,
    encode_user: bool | None = None,
) -> Engine:
    """An ``Engine`` over the checkpoint directory that training writes (config.json, model.safetensors,
    tokenizer.json). With ``preset`` the checkpoint must have been built from that preset, which is checked on the
    config before any weights are read."""
    path = Path(path).expanduser()
    expected = f"a checkpoint directory with {CONFIG_NAME}, {WEIGHTS_NAME} and {TOKENIZER_NAME} (e.g. runs/tiny/final)"
    if not path.is_dir():
        raise DemoError(f"checkpoint {path}: not found; expected {expected}")
    config = _read_config(path)
    if preset is not None:
        check_preset(config, preset, path)
    try:
        model = MetaLM.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise DemoError(f"checkpoint {path}: cannot load the model ({err})") from None
    try:
        tokenizer = Tokenizer.load(path)
    except (OSError, ValueError) as err:
        raise DemoError(f"checkpoint {path}: cannot load the tokenizer ({err})") from None
    if tokenizer.vocab_size > config.decoder.vocab_size:
        raise DemoError(
            f"checkpoint {path}: {TOKENIZER_NAME} has {tokenizer.vocab_size} ids but the decoder's vocabulary has "
            f"{config.decoder.vocab_size}; the tokenizer belongs to another model"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise DemoError(f"--device {device}: cannot move the model there ({err})") from None
    return Engine(model, tokenizer, source=str(path), preset=_recorded_preset(path) or preset, encode_user=encode_user)


def _read_config(path: Path) -> MetaLMConfig:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise DemoError(f"checkpoint {path}: {CONFIG_NAME} is missing; expected the MetaLM config that training writes")
    try:
        data = read_json(file, "MetaLM config")
        if not isinstance(data, dict) or data.get("model_type") != "metalm":
            raise ValueError("model_type is not 'metalm'")
        return MetaLMConfig.from_dict(data, str(file))
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise DemoError(f"checkpoint {path}: {file.name} is not a MetaLM config ({err})") from None


def _recorded_preset(path: Path) -> str | None:
    """The preset name training wrote beside the weights (train_config.json), when it is there and readable."""
    try:
        preset = read_json(path / "train_config.json", "training config").get("preset")
    except (OSError, ValueError, AttributeError):
        return None
    return preset if isinstance(preset, str) else None


def check_preset(config: MetaLMConfig, preset: str, path: str | Path) -> None:
    """Refuse, with the differences spelled out, a checkpoint that was not built from ``preset``: by the name
    training recorded in train_config.json when there is one, else by comparing the architecture (decoder shape,
    encoder names, kinds and sizes) with the preset's, so a wrong checkpoint never ends in a shape mismatch."""
    path = Path(path)
    if preset not in PRESETS:
        raise DemoError(f"--preset {preset!r}: unknown preset; expected one of {', '.join(PRESETS)}")
    recorded = _recorded_preset(path)
    if recorded is not None:
        if recorded != preset:
            raise DemoError(
                f"checkpoint {path} was trained from preset {recorded!r} (train_config.json), not {preset!r}; "
                f"pass --preset {recorded} or pick a {preset} checkpoint"
            )
        return
    try:
        want = get_preset(preset)
    except ValueError:  # a preset with pretrained parts: its shape is in files; compare the spec checkpoints record
        spec = read_spec_file(path / SPEC_NAME) if (path / SPEC_NAME).is_file() else None
        if spec != resolve_spec({"preset": preset}, PRESETS):
            raise DemoError(
                f"checkpoint {path} was not built from preset {preset!r}: its {SPEC_NAME} "
                f"{'is missing' if spec is None else 'describes another model'}. It is: {describe_config(config)}"
            ) from None
        return
    diffs = _architecture_diffs(config, want)
    if diffs:
        raise DemoError(
            f"checkpoint {path} is not a {preset!r} model: {'; '.join(diffs)}. It is: {describe_config(config)}"
        )


def _architecture_diffs(have: MetaLMConfig, want: MetaLMConfig) -> list[str]:
    diffs = [
        f"decoder.{f} is {getattr(have.decoder, f)!r} where the preset has {getattr(want.decoder, f)!r}"
        for f in _PRESET_DECODER_FIELDS
        if getattr(have.decoder, f) != getattr(want.decoder, f)
    ]
    if set(have.encoders) != set(want.encoders):
        diffs.append(f"encoders are {sorted(have.encoders)} where the preset has {sorted(want.encoders)}")
    for name in sorted(set(have.encoders) & set(want.encoders)):
        h, w = have.encoders[name], want.encoders[name]
        if h.kind != w.kind:
            diffs.append(f"encoder {name!r} is {h.kind!r} where the preset has {w.kind!r}")
            continue
        for key in sorted(set(h.kwargs) & set(w.kwargs) - set(_PRESET_FREE_ENCODER_KWARGS)):
            if h.kwargs[key] != w.kwargs[key]:
                diffs.append(f"encoder {name!r} {key} is {h.kwargs[key]!r} where the preset has {w.kwargs[key]!r}")
    return diffs


def describe_config(config: MetaLMConfig) -> str:
    """The architecture in one line: what a user needs to know which model answers."""
    d = config.decoder
    parts = [
        f"decoder {d.n_layers} layers x {d.dim} wide, {d.n_heads} heads, {d.positions} positions, "
        f"{d.max_seq_len}-token window, {d.vocab_size}-id vocabulary"
    ]
    for name, enc in config.encoders.items():
        model_name = enc.kwargs.get("model_name")
        parts.append(f"{name} encoder {enc.kind}{f' {model_name}' if model_name else ''}")
    if not config.encoders:
        parts.append("no encoders")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- answering


@dataclass
class Reply:
    """One answer and how it came about."""

    text: str  # what was streamed, cut before the first stop string
    token_ids: list[int]  # generated ids, without </s>
    finish_reason: str  # "eos" (</s>), "stop" (a CHAT_STOP string) or "length" (max_new_tokens)
    prompt_tokens: int
    dropped_turns: int  # oldest turns left out of the prompt so it fit the model's window
    seconds: float


class _Stop(Exception):
    """Raised from the token callback to end generation at a stop string or </s>."""


class _Stream:
    """Turns generated ids into text pieces: the whole answer is decoded at every step and only its new suffix is
    emitted, holding back a trailing incomplete UTF-8 character (decoded as U+FFFD) and any start of a stop string,
    so byte-level BPE pieces of one character and a stop string split over tokens both come out right."""

    def __init__(
        self, tokenizer: Tokenizer, on_text: TextCallback | None, eos_id: int, stop: Sequence[str] = CHAT_STOP
    ) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.eos_id = eos_id
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason = "length"

    def push(self, tokens: torch.Tensor) -> None:
        token = int(tokens[0])
        if token == self.eos_id:
            self.finish_reason = "eos"
            raise _Stop
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = _first_stop(text, self.stop)
        if cut is not None:
            self.finish_reason = "stop"
            self._emit(text[:cut], final=True)
            raise _Stop
        self._emit(text, final=False)

    def finish(self) -> str:
        if self.finish_reason == "length":
            self._emit(self.tokenizer.decode(self.ids), final=True)
        return self.text

    def _emit(self, text: str, final: bool) -> None:
        text = text.lstrip()  # the answer follows "Assistant:" after a space
        if not final:
            text = text[: len(text) - _held_back(text, self.stop)]
        if len(text) > len(self.text) and text.startswith(self.text):
            piece, self.text = text[len(self.text) :], text
            if self.on_text is not None:
                self.on_text(piece)


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters might still change: U+FFFD of an unfinished character, or a stop string's
    beginning."""
    n = len(text) - len(text.rstrip("\ufffd"))
    if n:
        return n
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Engine:
    """A model and its tokenizer, ready to answer conversations. It keeps no conversation (see ``Chat``); its lock
    serializes model calls, so one engine can serve several threads (the web server)."""

    def __init__(
        self,
        model: MetaLM,
        tokenizer: Tokenizer,
        source: str = "",
        preset: str | None = None,
        encode_user: bool | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source
        self.preset = preset
        self.prompts = PromptEncoder(model, tokenizer)
        if encode_user and self.prompts.text is None:
            raise DemoError(
                "--encode_user: this model has no text encoder to read the user's words: none reads the decoder's "
                "ids (native_text) or has its own tokenizer attached (hf_text)"
            )
        self.encode_user = self.prompts.text is not None if encode_user is None else encode_user
        self.chat = chat_format(model.tokenizer_files, tokenizer.added_tokens)
        eos = self.chat.eos
        self.eos_id = tokenizer.backend.token_to_id(eos) if eos is not None else tokenizer.eos_id
        self.max_seq_len = model.config.decoder.max_seq_len
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()

    @property
    def has_vision(self) -> bool:
        return self.prompts.vision is not None

    def describe(self) -> str:
        """Which model answers: its source, preset, architecture, size and how it reads a user turn."""
        size = sum(p.numel() for p in self.model.parameters()) / 1e6
        preset = f" (preset {self.preset})" if self.preset else ""
        words = "through the text encoder" if self.encode_user else "causally"
        return (
            f"{self.source}{preset}: {describe_config(self.model.config)}; {size:.1f}M parameters on "
            f"{self.device}; user words are read {words}"
        )

    def info(self) -> dict:
        """What a front end shows beside the conversation: model, limits, and whether images are accepted."""
        return {
            "checkpoint": self.source,
            "preset": self.preset,
            "description": self.describe(),
            "max_seq_len": self.max_seq_len,
            "vision": self.has_vision,
            "encode_user": self.encode_user,
            "image_size": list(self.prompts.image_size) if self.has_vision else None,
            "max_image_bytes": MAX_IMAGE_BYTES,
            "max_image_pixels": MAX_IMAGE_PIXELS,
        }

    def prepare(self, image: Image.Image) -> Image.Image:
        """``image`` at the vision encoder's input size, resized once as the prompt encoder would resize it, so a
        conversation holds small images and re-encoding its history stays cheap."""
        if not self.has_vision:
            raise DemoError("this model has no vision encoder, so it cannot read images")
        return encoder_sized(image, self.prompts.image_size)

    def prompt_tokens(self, turns: Sequence[Turn]) -> int:
        """Decoder positions the chat prompt of ``turns`` takes (images count one per docked vector)."""
        return len(self.prompts.encode(self.chat.prompt(turns, encode_user=self.encode_user)).ids)

    def fit(self, turns: Sequence[Turn], settings: Settings) -> tuple[list[Turn], int]:
        """The most recent turns whose prompt leaves ``max_new_tokens`` free in the model's window, dropping whole
        exchanges from the oldest, and how many turns were dropped. The last (user) turn alone must fit."""
        if not turns or turns[-1].role != "user":
            raise DemoError("the conversation must end with a user turn for the model to answer")
        budget = self.max_seq_len - settings.max_new_tokens
        if budget <= 0:
            raise DemoError(
                f"max_new_tokens = {settings.max_new_tokens} leaves no room for the prompt: the model reads at most "
                f"{self.max_seq_len} tokens in all; use fewer new tokens"
            )
        for start in range(len(turns)):
            if turns[start].role != "user":
                continue  # a prompt starts with a user turn
            n = self.prompt_tokens(turns[start:])
            if n <= budget:
                return list(turns[start:]), start
        raise DemoError(
            f"the instruction is too long: with its images and the chat template it takes {n} tokens, but the model "
            f"reads at most {self.max_seq_len} tokens and {settings.max_new_tokens} of them are kept for the answer, "
            f"so the limit is {budget}; shorten it or lower max_new_tokens"
        )

    def respond(self, turns: Sequence[Turn], settings: Settings, on_text: TextCallback | None = None) -> Reply:
        """Answer the conversation ``turns`` (ending with a user turn), calling ``on_text`` with each new piece of
        the answer as it is written. Turns that do not fit the window are left out (see ``fit``)."""
        kept, dropped = self.fit(turns, settings)
        encoded = self.prompts.encode(self.chat.prompt(kept, encode_user=self.encode_user))
        ids, mask, docks = self.prompts.collate([encoded])
        ids, mask, docks = ids.to(self.device), mask.to(self.device), [d.to(self.device) for d in docks]
        generator = None
        if not settings.greedy and settings.seed is not None:
            generator = torch.Generator(self.device).manual_seed(settings.seed)
        stream = _Stream(self.tokenizer, on_text, self.eos_id, self.chat.stop)
        with self.lock:
            start = time.perf_counter()
            try:
                self.model.generate(
                    ids,
                    docks,
                    attention_mask=mask,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=not settings.greedy,
                    temperature=settings.temperature,
                    top_k=settings.top_k,
                    top_p=settings.top_p,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.tokenizer.pad_id,
                    generator=generator,
                    on_token=stream.push,
                )
            except _Stop:
                pass
            seconds = time.perf_counter() - start
        return Reply(stream.finish(), stream.ids, stream.finish_reason, len(encoded.ids), dropped, seconds)


class Chat:
    """One conversation with an engine: its turns, the images waiting for the next user turn, and its settings."""

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings or Settings()
        self.turns: list[Turn] = []
        self.pending: list[Image.Image] = []
        self._lock = threading.Lock()

    def attach(self, source: str | Path | bytes, name: str | None = None) -> Image.Image:
        """Read an image now (so a bad one is reported at once) and keep it for the next user turn."""
        if not self.engine.has_vision:
            raise DemoError("this model has no vision encoder, so it cannot read images")
        image = load_image(source, name)
        self.pending.append(self.engine.prepare(image))
        return image

    def reset(self) -> None:
        """Forget the conversation and any attached images (the settings stay)."""
        self.turns.clear()
        self.pending.clear()

    def ask(
        self,
        text: str,
        images: Sequence[Image.Image] = (),
        on_text: TextCallback | None = None,
        on_notice: TextCallback | None = None,
    ) -> Reply:
        """Answer ``text`` with the attached images and ``images`` (loaded by ``load_image``), streaming through
        ``on_text``. The turn and its answer join the conversation only once the answer is complete; ``on_notice``
        hears about old turns left out to fit the window."""
        if not text.strip():
            raise DemoError("the instruction is empty: type what the model should do, e.g. 'describe the picture'")
        try:
            text.encode("utf-8")  # the tokenizer cannot take lone surrogates (JSON's "\udcff", undecodable bytes)
        except UnicodeEncodeError:
            raise DemoError(f"the instruction is not valid text ({text[:40]!r}); expected UTF-8") from None
        images = [self.engine.prepare(image) for image in images]
        with self._lock:
            turns = [*self.turns, Turn("user", text.strip(), [*self.pending, *images])]
            kept, dropped = self.engine.fit(turns, self.settings)
            if dropped and on_notice is not None:
                exchanges = (dropped + 1) // 2
                on_notice(
                    f"the conversation no longer fits the model's {self.engine.max_seq_len}-token window: left "
                    f"out the {dropped} oldest turn{'s' * (dropped != 1)} ({exchanges} exchange"
                    f"{'s' * (exchanges != 1)})"
                )
            reply = self.engine.respond(kept, self.settings, on_text)
            reply.dropped_turns = dropped
            self.turns = [*kept, Turn("assistant", reply.text)]
            self.pending.clear()
            return reply
