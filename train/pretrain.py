"""Semi-causal pretraining of MetaLM: ``torchrun --standalone --nproc_per_node=1 train/pretrain.py``.

With no arguments it generates the bundled world (if missing), trains a BPE tokenizer on its corpus, writes
webdataset shards, warms up the vision encoder on the world's scene labels (standing in for the pretrained
encoder MetaLM docks; then frozen), trains the ``tiny`` preset on text documents and image-caption pairs, and saves
``runs/tiny/final`` (config.json, model.safetensors, tokenizer.json). It then prints the loss against a unigram
baseline and greedy captions of held-out images. Every field of ``train.pretraining.PretrainConfig`` is a flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from train.pretraining import parse_pretrain_config, pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return pretrain(parse_pretrain_config(argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main()["exit_code"])  # 0, or 128 + the signal that stopped the run early
