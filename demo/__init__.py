"""The instruction-following demo: a terminal chat (``demo/chat.py``) and a web page (``demo/web.py``) over one core
(``demo.engine``).

This module holds the part both front ends need before any model is loaded: the decoding settings, the user-facing
error and the command-line options. It imports nothing heavy, so ``--help`` answers at once and a bad flag is
refused before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # an image file larger than this is refused before it is read
MAX_IMAGE_PIXELS = 40_000_000  # checked from the header, before the pixels are decoded (decompression bombs)


class DemoError(ValueError):
    """Something the user gave (a checkpoint, an image, an instruction, a setting) that the demo cannot use; the
    message says what was wrong and what was expected, and the front ends show it and keep going."""


@dataclass(frozen=True)
class Settings:
    """How answers are decoded. ``seed`` reseeds sampling at the start of every answer, so the same conversation
    and settings give the same answer; None draws fresh randomness each time."""

    max_new_tokens: int = 48
    greedy: bool = False
    temperature: float = 0.7
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 0.9  # 1.0: no nucleus filter
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise DemoError(f"{name} = {value!r}: expected an integer")
        if self.max_new_tokens < 1:
            raise DemoError(f"max_new_tokens = {self.max_new_tokens}: expected at least 1")
        if self.top_k < 0:
            raise DemoError(f"top_k = {self.top_k}: expected 0 (off) or a positive number of tokens")
        if not isinstance(self.greedy, bool):
            raise DemoError(f"greedy = {self.greedy!r}: expected true or false")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                raise DemoError(f"{name} = {value!r}: expected a number")
        if not 0 < self.temperature <= 100:
            raise DemoError(
                f"temperature = {self.temperature}: expected a number in (0, 100]; for deterministic answers use "
                "greedy decoding instead of temperature 0"
            )
        if not 0 < self.top_p <= 1:
            raise DemoError(f"top_p = {self.top_p}: expected a number in (0, 1] (1 turns the filter off)")
        if self.seed is not None:
            if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
                raise DemoError(f"seed = {self.seed!r}: expected a whole number from 0 to 2**63 - 1, or none")

    def describe(self) -> str:
        """One line for the terminal and the logs, so every answer's decoding is written down."""
        if self.greedy:
            how = "greedy"
        else:
            how = f"sampling (temperature {self.temperature:g}, top_k {self.top_k}, top_p {self.top_p:g})"
        seed = "" if self.greedy else f", seed {'random' if self.seed is None else self.seed}"
        return f"{how}, up to {self.max_new_tokens} new tokens{seed}"


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))


def parse_settings(values: Mapping[str, object], base: Settings | None = None) -> Settings:
    """``base`` with the given fields replaced; values may be strings (a form, ``/settings temperature=0.5``) or
    already typed (JSON). Unknown names and unparsable values raise DemoError naming the field."""
    base = base or Settings()
    changes: dict[str, object] = {}
    for name, raw in values.items():
        if name not in SETTING_NAMES:
            raise DemoError(f"unknown setting {name!r}: expected one of {', '.join(SETTING_NAMES)}")
        changes[name] = _convert(name, raw)
    return dataclasses.replace(base, **changes)


def _convert(name: str, raw: object) -> object:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if name == "greedy":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise DemoError(f"greedy = {raw!r}: expected true or false")
    if name == "seed" and text.lower() in ("", "none", "random"):
        return None
    kind = float if name in ("temperature", "top_p") else int
    try:
        return kind(text)
    except ValueError:
        raise DemoError(f"{name} = {raw!r}: expected {'a number' if kind is float else 'an integer'}") from None


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options both front ends share: which checkpoint, where it runs, and the decoding settings (underscore
    flags; give ``parser`` as an ``eval.flags.FlagParser`` so the older hyphenated spelling still parses)."""
    d = Settings()
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint directory (config.json, model.safetensors, tokenizer.json), e.g. runs/tiny/final",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="refuse the checkpoint unless it was built from this preset (tiny, tiny-gpt, language-xl, vl-medium)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--encode_user",
        action="store_true",
        default=None,
        help="read the user's words through the text encoder, as MetaLM reads instructions "
        "(default: when the model has a text encoder)",
    )
    parser.add_argument(
        "--no_encode_user",
        dest="encode_user",
        action="store_false",
        default=None,
        help="read the user's words causally instead of through the text encoder",
    )
    g = parser.add_argument_group("decoding (also editable while chatting)")
    g.add_argument("--max_new_tokens", type=int, default=None, help=f"answer length limit (default {d.max_new_tokens})")
    g.add_argument("--greedy", action="store_true", default=None, help="greedy decoding instead of sampling")
    g.add_argument("--temperature", type=float, default=None, help=f"sampling temperature (default {d.temperature})")
    g.add_argument("--top_k", type=int, default=None, help=f"keep the k likeliest tokens, 0 = all (default {d.top_k})")
    g.add_argument("--top_p", type=float, default=None, help=f"nucleus sampling mass, 1 = off (default {d.top_p})")
    g.add_argument("--seed", type=int, default=None, help="reseed sampling with this at every answer (default: random)")


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The decoding settings the flags ask for; a bad value exits with the parser's usage message."""
    given = {name: getattr(args, name) for name in SETTING_NAMES if getattr(args, name, None) is not None}
    try:
        return parse_settings(given)
    except DemoError as err:
        parser.error(str(err))
