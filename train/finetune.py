"""Finetune a pretrained MetaLM on one task, on the shared training loop, then evaluate it on the task.

    torchrun --standalone --nproc_per_node=1 train/finetune.py --init_from runs/tiny/final --task world-vqa \\
        --out runs/finetune-vqa

Every example becomes a prompt from ``data.templates`` followed by its answer: classification as the template and
its label word (the paper's "it is [label]"), VQA as ``<image> Question: ... Answer:`` and the annotators' answer,
captioning as the image and one reference caption. The loss counts the answer tokens (and the closing ``</s>``)
only. With ``--encode_input`` (default when the model has a text encoder that shares the decoder's tokenizer) the
prompt's text goes through the bidirectional text encoder and the decoder writes the answer, as MetaLM finetunes;
``--freeze_decoder`` trains only the encoders and connectors (the paper's MNLI recipe). Resume, checkpoints,
SIGTERM handling and NaN checks are the training loop's (train/loop.py). At the end the final checkpoint is
scored by the task's evaluator (``eval.evaluators``, as the task's eval script scores it) and its results JSON lands
in the run directory.
The job itself is ``train.finetuning.finetune``; every field of its ``FinetuneConfig`` is a flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from train.finetuning import finetune, parse_finetune_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return finetune(parse_finetune_config(argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main()["exit_code"])  # 0, or 128 + the signal that stopped the run early
