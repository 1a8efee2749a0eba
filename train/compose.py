"""Compose a MetaLM from a model spec and save it untrained: ``python train/compose.py --preset language-small
--out runs/language-small``.

The spec flags are pretraining's (see ``metalm/spec.py``). The checkpoint holds the spec, the weights (pretrained
parts loaded, the rest seeded from ``--seed``), the decoder's tokenizer with MetaLM's special tokens and each
encoder's own tokenizer: the demo, the eval scripts and ``--init_from`` read it as they read a trained one.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402
from train.config import ConfigError  # noqa: E402
from train.pretraining import COMPOSE_FIELDS, PretrainConfig, compose  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    fields = PretrainConfig.__dataclass_fields__
    for name in COMPOSE_FIELDS:
        parser.add_argument(f"--{name}", default=None, help=fields[name].metadata["help"])
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights that are not pretrained")
    parser.add_argument("--out", required=True, help="the checkpoint directory to write")
    args = parser.parse_args(argv)
    given = {name: getattr(args, name) for name in COMPOSE_FIELDS if getattr(args, name) is not None}
    try:
        path = compose(given, args.seed, args.out)
    except (ConfigError, FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}  (MetaLM.from_pretrained loads it; python demo/chat.py --checkpoint {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
