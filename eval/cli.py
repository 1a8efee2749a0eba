"""The command line every benchmark script shares. Only the standard library is imported here, so ``--help``
answers at once; the scripts import the model code after parsing their arguments."""

from __future__ import annotations

import argparse

MODES = ("causal", "encoder")
CALIBRATIONS = ("none", "contextual", "prototypical")


def base_parser(description: str, generative: bool = False, classification: bool = False) -> argparse.ArgumentParser:
    """The flags every script takes; ``generative`` adds decoding flags, ``classification`` calibration flags."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="MetaLM checkpoint directory (config.json, "
                   "model.safetensors, tokenizer.json), e.g. runs/tiny/final")  # fmt: skip
    p.add_argument("--out", default=None, help="results JSON (predictions go beside it as .predictions.jsonl); "
                   "default: results/<benchmark>.json")  # fmt: skip
    p.add_argument("--shots", default="0", help="comma-separated numbers of in-context demonstrations, e.g. 0,1,4")
    p.add_argument("--trials", type=int, default=3, help="demonstration sets drawn per shot count (k > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first trial's demonstrations")
    p.add_argument("--icl-mode", choices=MODES, default="causal",
                   help="causal: demonstrations as plain text; encoder: demonstrations read by the text encoder "
                   "(MetaLM's in-context customization)")  # fmt: skip
    p.add_argument("--encode-input", action="store_true",
                   help="send the query's text through the text encoder (the layout of a model finetuned with "
                   "--encode_input); the answer stays causal")  # fmt: skip
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--on-error", choices=("error", "skip"), default="error",
                   help="a bad example (missing image, no annotation, malformed line, unknown label): stop with an "
                   "error naming it, or skip it and count it in the results JSON")  # fmt: skip
    if generative:
        p.add_argument("--max-new-tokens", type=int, default=16)
        p.add_argument("--num-beams", type=int, default=1, help="1: greedy decoding")
        p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
    if classification:
        p.add_argument("--calibration", choices=CALIBRATIONS, default="none",
                       help="which calibrated accuracy is the headline and gives the predictions (all three are "
                       "computed and reported)")  # fmt: skip
    return p


def image_classification_main(
    argv: list[str] | None, doc: str, task: str, reader: str, data_help: str, images_help: str, demos_help: str
) -> dict:
    """The whole CLI of an image-text classification benchmark (SNLI-VE, NLVR2): ``reader`` names its
    ``data.tasks`` reader, which takes ``(file, images_dir)``; the task's template comes from ``data.templates``."""
    p = base_parser(doc, classification=True)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--images", required=True, help=images_help)
    p.add_argument("--demos", default=None, help=demos_help)
    args = p.parse_args(argv)
    from data import tasks
    from eval.common import classification, finish

    read = getattr(tasks, reader)
    data = read(args.data, args.images, on_error=args.on_error)
    demos = read(args.demos, args.images, on_error=args.on_error) if args.demos else None
    header, outcome = classification(args, task, data, demos)
    return finish(args, task, header, outcome)
