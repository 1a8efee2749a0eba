"""ELECTRA pretraining of the world's text encoder (Hao et al., ACL Findings 2021: learned replacement sampling).

    python train/electra.py --sampling hardness --out runs/electra-hp            # one run: runs/electra-hp/encoder.*
    python train/electra.py --compare --seeds 0,1,2 --out results/electra       # plain vs hardness vs focal, finetuned
    python train/electra.py --dock runs/electra/encoder.safetensors --metalm_steps 100 --out results/electra
    python train/electra.py --compare --text tinyshakespeare.txt --vocab_size 4096 --tasks sst2 \
        --task_train SST-2/train.tsv --task_val SST-2/heldout.tsv --out results/electra/shakespeare

A generator (masked LM) proposes replacements at masked tokens and the encoder learns replaced-token detection; the
loss is ``MLM + rtd_weight * RTD``. ``--sampling hardness`` samples replacements in proportion to generator
probability times a predicted discriminator loss and reweights that loss so it stays unbiased; ``--generator_loss
focal`` trains the generator with a focal loss. The saved ``encoder.safetensors`` docks into a model spec as
``{kind: native_text, weights: FILE, freeze: all_but_last_2}`` (one pretrained on the world's corpus: it reads the
world tokenizer's ids). With ``--text`` it pretrains on a plain-text file whose context constrains its words, as the
world's documents of independent facts do not, with a BPE trained on it (saved beside the encoder); ``--tasks``
then names a GLUE task read from ``--task_train`` / ``--task_val``. The library is ``train.electra_pretraining``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="data/world", help="the bundled world (generated there if missing)")
    p.add_argument(
        "--text",
        default="",
        help="pretrain on this plain-text file instead of the world's corpus (blank-line paragraphs, or a document a "
        "line; the last 5%% held out) with a BPE of --vocab_size trained on it",
    )
    p.add_argument("--vocab_size", type=int, default=2048, help="the tokenizer's size (the world's, or --text's)")
    p.add_argument("--out", default="runs/electra", help="run directory, or with --compare the results directory")
    p.add_argument("--sampling", default="plain", choices=("plain", "hardness"), help="replacement sampling")
    p.add_argument("--generator_loss", default="ce", choices=("ce", "focal"), help="the generator's MLM loss")
    p.add_argument("--gamma", type=float, default=1.0, help="focal loss exponent (0: cross-entropy)")
    p.add_argument("--rtd_weight", type=float, default=50.0, help="lambda: weight of the RTD loss (ELECTRA: 50)")
    p.add_argument("--mask_prob", type=float, default=0.15, help="share of tokens masked for the generator")
    p.add_argument("--steps", type=int, default=200, help="pretraining steps")
    p.add_argument("--batch_size", type=int, default=32, help="rows per pretraining step")
    p.add_argument("--seq_len", type=int, default=64, help="tokens per pretraining row")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (linear warm-up and decay)")
    p.add_argument("--dim", type=int, default=128, help="the encoder's (discriminator's) width")
    p.add_argument("--n_layers", type=int, default=2, help="the encoder's layers")
    p.add_argument("--n_heads", type=int, default=4, help="the encoder's attention heads")
    p.add_argument(
        "--gen_dim", type=int, default=64, help="the generator's width (ELECTRA: a fraction of the encoder's)"
    )
    p.add_argument("--gen_layers", type=int, default=1, help="the generator's layers")
    p.add_argument("--seed", type=int, default=0, help="seed of one run")
    p.add_argument("--compare", action="store_true", help="run the comparison and write results into --out")
    p.add_argument("--variants", default="electra,hardness,focal,scratch", help="comparison arms")
    p.add_argument("--seeds", default="0,1,2", help="comparison seeds, comma-separated")
    p.add_argument("--jobs", type=int, default=1, help="with --compare: runs at a time (processes)")
    p.add_argument("--finetune_steps", type=int, default=100, help="finetuning steps per downstream task")
    p.add_argument(
        "--tasks", default="entail,choice", help="downstream tasks: the world's entail, choice, or a GLUE task"
    )
    p.add_argument("--task_train", default="", help="a GLUE task's training tsv (e.g. SST-2's)")
    p.add_argument("--task_val", default="", help="and its held-out tsv")
    p.add_argument("--finetune_lr", type=float, default=1e-3, help="downstream finetuning learning rate")
    p.add_argument("--dock", default="", help="an ELECTRA encoder.safetensors: MetaLM docked vs from-scratch encoder")
    p.add_argument("--metalm_steps", type=int, default=100, help="with --dock: MetaLM pretraining steps per arm")
    p.add_argument("--metalm_batch_size", type=int, default=8, help="with --dock: MetaLM rows per step")
    p.add_argument("--metalm_seeds", default="0", help="MetaLM comparison seeds, comma-separated")
    p.add_argument("--runs", default="runs/electra-compare", help="with --compare or --dock: where each run's files go")
    args = p.parse_args(argv)
    # the library loads torch and the model code (seconds): imported after parsing so --help answers at once
    from train.electra_pretraining import (
        ElectraConfig,
        FinetuneSettings,
        pretrain_electra,
        run_comparison,
        run_dock_comparison,
    )

    cfg = ElectraConfig(
        world=args.world,
        text=args.text,
        vocab_size=args.vocab_size,
        out=args.out,
        sampling=args.sampling,
        generator_loss=args.generator_loss,
        gamma=args.gamma,
        rtd_weight=args.rtd_weight,
        mask_prob=args.mask_prob,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        gen_dim=args.gen_dim,
        gen_layers=args.gen_layers,
        seed=args.seed,
    )
    if args.dock:
        return run_dock_comparison(
            Path(args.dock),
            args.world,
            args.metalm_steps,
            _ints(args.metalm_seeds),
            Path(args.runs),
            Path(args.out),
            args.metalm_batch_size,
        )
    if not args.compare:
        summary = pretrain_electra(cfg)
        print(f"encoder: {summary['encoder']}  ({summary['seconds']:.0f}s)  last tenth: {summary['last_tenth']}")
        print(f"held-out detection: {summary['held_out_detection']}")
        return summary
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    finetune = FinetuneSettings(lr=args.finetune_lr, task_train=args.task_train, task_val=args.task_val)
    return run_comparison(
        cfg,
        variants,
        _ints(args.seeds),
        args.finetune_steps,
        Path(args.runs),
        Path(args.out),
        args.jobs,
        tasks,
        finetune,
    )


if __name__ == "__main__":
    main()
