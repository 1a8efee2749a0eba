"""Instruction tuning on FLAN-style data, on the shared training loop, with task clusters held out for zero-shot.

    torchrun --standalone --nproc_per_node=1 train/instruct.py --init_from runs/tiny/final --out runs/instruct

Each example (instruction, optional input and image, output; see ``data.tasks.read_instructions``) is rendered by
one of several templates chosen at random (``data.templates.INSTRUCTION_TEMPLATES``) into a chat turn
``[image] User: ...\\nAssistant:`` followed by the output and ``</s>``; a closed-set task's options are
listed after the input, as FLAN lists them. The loss counts the output only. Short examples are packed into rows
of ``--seq_len`` tokens. The task clusters in ``--heldout_tasks`` are never trained on: at the end the
instruction evaluator of ``eval.evaluators`` (as ``eval/instruct.py`` runs it) scores them (and the trained
clusters) on the validation file for the starting checkpoint and the tuned one, by exact match of the generated
answer and, where the examples list options, by rank classification, so the printed table shows zero-shot
transfer to unseen instruction types.
With ``--encode_user`` (auto: when the model has a text encoder) the user's words go through the bidirectional
text encoder, as MetaLM reads an instruction; the answer is written causally. The job itself is
``train.instruction_tuning.instruction_tune``; every field of its ``InstructConfig`` is a flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from train.instruction_tuning import instruction_tune, parse_instruct_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return instruction_tune(parse_instruct_config(argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main()["exit_code"])  # 0, or 128 + the signal that stopped the run early
