"""SNLI-VE visual entailment (does the image entail, contradict or leave open the hypothesis?) from the published
jsonl and the Flickr30k images, scored by ranking label words, zero-shot or in-context, with calibration.

    python eval/snli_ve.py --checkpoint runs/tiny/final --data snli_ve_dev.jsonl --images flickr30k_images
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import image_classification_main  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return image_classification_main(
        argv, __doc__.split("\n\n")[0], "snli-ve", "read_snli_ve",
        data_help="snli_ve_{dev,test}.jsonl",
        images_help="directory of the Flickr30k images (<Flickr30K_ID>.jpg)",
        demos_help="labeled jsonl for in-context demonstrations (snli_ve_train.jsonl)",
    )  # fmt: skip


if __name__ == "__main__":
    main()
