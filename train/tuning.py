"""What finetuning and instruction tuning share: starting from a pretrained checkpoint, freeze policies, and the
final report of the training losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data.prompts import PromptEncoder
from data.tokenizer import Tokenizer
from encoders.base import FREEZE_POLICY
from metalm.model import MetaLM
from train.config import ConfigError, LoopConfig, option
from train.loop import Env, TrainResult, check_fresh_out, setup_env


@dataclass
class TuneConfig(LoopConfig, defaults={"lr": 3e-4, "warmup_steps": 30}):
    """The fields every job that starts from a pretrained checkpoint reads, on top of the loop's; a gentler
    learning rate and warm-up than pretraining's."""

    init_from: str = option("", "the pretrained MetaLM checkpoint directory to start from (required)")
    init_weights: str = option(
        "checkpoint",
        "checkpoint: start from --init_from's weights; random: its architecture and tokenizer with every weight "
        "freshly initialised (seeded by --seed), the from-scratch control of a pretrained finetuning",
        choices=("checkpoint", "random"),
    )
    world: str = option("data/world", "bundled world directory (world tasks and the default data)")
    batch_size: int = option(16, "sequences per micro-batch on each process", min=1)
    freeze_decoder: bool = option(False, "train only encoders and connectors (the paper's MNLI recipe)")
    encoder_freeze: dict = option({}, "freeze policy per encoder, e.g. {text: none, vision: all}")
    seed: int = option(0, "seed for data order and dropout")
    eval_batches: int = option(8, "validation batches per evaluation", min=1)
    eval_limit: int = option(
        200,
        "examples the final evaluation scores (finetuning: in all, 0: all; instruction tuning: per task cluster)",
        min=0,
    )
    final_eval: bool = option(
        True,
        "score the final checkpoint as the eval scripts do (finetuning: the task's evaluator; instruction tuning: "
        "the instruction evaluator on held-out and trained clusters, before and after tuning)",
    )

    def check(self) -> None:
        """The fields' own ranges, then each encoder's freeze policy (the encoder names are checked against the
        model once it is loaded)."""
        super().check()
        for name, policy in self.encoder_freeze.items():
            if not (isinstance(policy, str) and FREEZE_POLICY.match(policy)):
                raise ConfigError(
                    "encoder_freeze",
                    f"encoder_freeze = {self.encoder_freeze!r}: {name}'s policy {policy!r}: expected none, all or "
                    "all_but_last_N (e.g. all_but_last_2)",
                )


def configure_freeze(model: MetaLM, cfg: TuneConfig) -> None:
    """Apply ``cfg.encoder_freeze`` (per encoder) and ``cfg.freeze_decoder`` to ``model``."""
    unknown = sorted(set(cfg.encoder_freeze) - set(model.encoders))
    if unknown:
        raise ValueError(f"encoder_freeze names {unknown}; this model's encoders are {sorted(model.encoders)}")
    for name, policy in cfg.encoder_freeze.items():
        model.config.encoders[name].freeze = policy
    model.apply_freeze()
    if cfg.freeze_decoder:
        model.decoder.requires_grad_(False)


def initial_model(cfg: TuneConfig) -> tuple[MetaLM, Tokenizer]:
    """The model a tuning job starts from (``--init_from``'s weights, or fresh ones of its shape with
    ``--init_weights random``), freeze policies applied, and its tokenizer. The RNG is seeded with ``--seed``
    first, so a random start is the same every time: analyses that compare against the start (the loss
    landscape's path from the initialisation) rebuild it here."""
    torch.manual_seed(cfg.seed)
    model = MetaLM.from_pretrained(cfg.init_from)
    if cfg.init_weights == "random":
        fresh = MetaLM(model.config)  # every part built with random weights, from the seeded RNG
        model.load_state_dict(fresh.state_dict())
        del fresh
    tokenizer = Tokenizer.load(cfg.init_from)
    model.decoder_tokenizer = tokenizer.backend  # its checkpoints carry the tokenizer it was tuned with
    configure_freeze(model, cfg)
    return model, tokenizer


def load_pretrained(cfg: TuneConfig, encode_flag: str, flag: str) -> tuple[Env, MetaLM, Tokenizer, PromptEncoder, bool]:
    """The process environment, the ``--init_from`` model (freeze policies applied) and tokenizer, its prompt
    encoder, and whether prompts go through the text encoder (``encode_flag``: auto / true / false); the config is
    checked first, so a bad value stops the job before any work."""
    cfg.check()
    if not cfg.init_from:
        raise ValueError("this script starts from a pretrained checkpoint: give --init_from, e.g. runs/tiny/final")
    check_fresh_out(cfg)  # before loading: an --out holding an unfinished run is refused at once
    env = setup_env()
    model, tokenizer = initial_model(cfg)
    prompts = PromptEncoder(model, tokenizer)
    encode = {"auto": prompts.text is not None, "true": True, "false": False}[encode_flag]
    if encode and prompts.text is None:
        raise ValueError(
            f"{flag} true: this model has no text encoder to read it: none reads the decoder's ids (native_text) or "
            "has its own tokenizer attached (hf_text)"
        )
    return env, model, tokenizer, prompts, encode


def report_final(result: TrainResult, summary: dict, val_name: str) -> None:
    """Add the run's first and last training loss, last validation loss and final checkpoint to ``summary``, and
    print them."""
    summary.update(result.final_losses())
    print(f"\nfinal checkpoint: {result.final_dir}")
    print(
        f"training loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} over {result.step} steps; "
        f"{val_name} {summary['val_loss']:.3f}"
    )
