"""How an evaluation runs, as typed settings: what the library's evaluators read instead of parsed flags.

Only the standard library is imported here, so the command-line parsers (``eval/cli.py``) can share the choices
without loading the model code.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODES = ("causal", "encoder", "encoder_inputs")
"""How in-context demonstrations are read (``eval.icl.few_shot_prompt``): as plain text, wholly by the text encoder,
or their inputs by the encoder and their answers causally."""
CALIBRATIONS = ("none", "contextual", "prototypical")
ON_ERROR = ("error", "skip")
DTYPES = ("float32", "bfloat16")  # weights and activations of --scoring lighteval (the model card used bf16)
SCORINGS = ("harness", "lighteval")  # how multiple-choice options are scored (eval/multiple_choice.py --scoring)
WORLD_TASKS = ("captions", "vqa", "entail", "choice")  # the bundled world's benchmarks (eval.evaluators)
NEW_TOKENS = {"vqa": 8, "caption": 24, "instruction": 24}
"""Tokens generated per answer by default, by kind of answer: the eval scripts' ``--max_new_tokens`` defaults, and
what training's final evaluations generate, so both score a checkpoint the same way."""


def shots_list(text: str) -> list[int]:
    """``"0,1,4"`` -> ``[0, 1, 4]`` (for ``--shots``); negative or malformed values are an error."""
    try:
        shots = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"--shots {text!r}: expected comma-separated integers such as 0,1,4") from err
    if not shots or any(s < 0 for s in shots):
        raise ValueError(f"--shots {text!r}: expected one or more integers >= 0")
    return shots


def _check_int(name: str, value: object, low: int, expected: str) -> None:
    """An error naming the setting (and its flag ``--name``) unless ``value`` is an integer >= ``low``: a zero or
    negative count would run nothing, or everything, without saying so."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} (--{name}) is {value!r}; expected an integer, {expected}")


@dataclass
class DecodeSettings:
    """How answers are generated; printed by every script and stored in its results JSON."""

    max_new_tokens: int = 16
    num_beams: int = 1
    length_penalty: float = 1.0
    stop: tuple[str, ...] = ("\n",)

    def __post_init__(self) -> None:
        for name, value in (("max_new_tokens", self.max_new_tokens), ("num_beams", self.num_beams)):
            _check_int(name, value, 1, "at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalSettings:
    """One evaluation run: the checkpoint, where results go, the in-context protocol (``shots`` demonstrations,
    ``trials`` seeded sets from ``seed``, shown ``icl_mode``), the query layout, and decoding (the evaluator sets
    the stop strings)."""

    checkpoint: str | Path
    out: str | Path | None = None  # results JSON; None: results/<benchmark>.json
    shots: list[int] = field(default_factory=lambda: [0])
    trials: int = 3
    seed: int = 0
    icl_mode: str = "causal"
    encode_input: bool = False  # the query's text read by the text encoder (a model finetuned that way)
    limit: int = 0  # the first N examples only (0: all)
    batch_size: int = 16
    device: str = "auto"
    on_error: str = "error"
    calibration: str = "none"  # the headline of classification (all three are computed)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    scoring: str = "harness"  # multiple choice: lm-evaluation-harness style, or lighteval's (eval/lighteval.py)
    chat_template: bool = False  # lighteval scoring: the query wrapped in the model's chat template
    dtype: str = "float32"  # lighteval scoring: the decoder's dtype

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("icl_mode", self.icl_mode, MODES),
            ("calibration", self.calibration, CALIBRATIONS),
            ("on_error", self.on_error, ON_ERROR),
            ("scoring", self.scoring, SCORINGS),
            ("dtype", self.dtype, DTYPES),
        ):
            if value not in choices:
                raise ValueError(f"{name} {value!r}: expected one of {choices}")
        if not self.shots or any(k < 0 for k in self.shots):
            raise ValueError(f"shots {self.shots}: expected one or more integers >= 0")
        _check_int("trials", self.trials, 1, "at least 1 demonstration set per shot count")
        _check_int("limit", self.limit, 0, "0 (all examples) or a positive number of examples")
        _check_int("batch_size", self.batch_size, 1, "at least 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSettings:
        """The settings of a parsed ``eval.cli.base_parser`` command line (decoding and calibration flags where the
        parser has them)."""
        decode = {name: getattr(args, name, None) for name in ("max_new_tokens", "num_beams", "length_penalty")}
        return cls(
            checkpoint=args.checkpoint,
            out=args.out,
            shots=shots_list(args.shots),
            trials=args.trials,
            seed=args.seed,
            icl_mode=args.icl_mode,
            encode_input=args.encode_input,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            on_error=args.on_error,
            calibration=getattr(args, "calibration", "none"),
            decode=DecodeSettings(**{k: v for k, v in decode.items() if v is not None}),
            scoring=getattr(args, "scoring", "harness"),
            chat_template=getattr(args, "chat_template", False),
            dtype=getattr(args, "dtype", "float32"),
        )
