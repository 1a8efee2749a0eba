"""The command line every benchmark script shares. Only the standard library and ``eval.settings`` (itself
standard library only) are imported here, so ``--help`` answers at once; the scripts import the evaluation library
after parsing their arguments."""

from __future__ import annotations

import argparse

from eval.flags import FlagParser
from eval.settings import CALIBRATIONS, MODES, ON_ERROR


def base_parser(description: str, generative: bool = False, classification: bool = False) -> FlagParser:
    """The flags every script takes; ``generative`` adds decoding flags, ``classification`` calibration flags."""
    p = FlagParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="MetaLM checkpoint directory (config.json, model.safetensors, tokenizer.json), e.g. runs/tiny/final",
    )
    p.add_argument(
        "--out",
        default=None,
        help="results JSON (predictions go beside it as .predictions.jsonl); default: results/<benchmark>.json",
    )
    p.add_argument("--shots", default="0", help="comma-separated numbers of in-context demonstrations, e.g. 0,1,4")
    p.add_argument("--trials", type=int, default=3, help="demonstration sets drawn per shot count (k > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first trial's demonstrations")
    p.add_argument(
        "--icl_mode",
        choices=MODES,
        default="causal",
        help="causal: demonstrations as plain text; encoder: demonstrations read by the text encoder "
        "(MetaLM's in-context customization); encoder_inputs: their inputs read by the encoder, their answers "
        "causally",
    )
    p.add_argument(
        "--encode_input",
        action="store_true",
        help="send the query's text through the text encoder (the layout of a model finetuned with "
        "--encode_input); the answer stays causal",
    )
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples (0: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument(
        "--on_error",
        choices=ON_ERROR,
        default="error",
        help="a bad example (missing or unreadable image, no annotation, malformed line, unknown label, repeated "
        "id, input too long for the model): stop with an error naming it, or skip it and count it in the results JSON",
    )
    if generative:
        p.add_argument("--max_new_tokens", type=int, default=16)
        p.add_argument("--num_beams", type=int, default=1, help="1: greedy decoding")
        p.add_argument("--length_penalty", type=float, default=1.0, help="beam search: score / length ** this")
    if classification:
        p.add_argument(
            "--calibration",
            choices=CALIBRATIONS,
            default="none",
            help="which calibrated accuracy is the headline and gives the predictions (all three are "
            "computed and reported)",
        )
    return p


def image_classification_parser(description: str, data_help: str, images_help: str, demos_help: str) -> FlagParser:
    """The command line of an image-text classification benchmark (SNLI-VE, NLVR2): its data file, image root and
    optional demonstration file."""
    p = base_parser(description, classification=True)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--images", required=True, help=images_help)
    p.add_argument("--demos", default=None, help=demos_help)
    return p
