"""Semi-causal pretraining of MetaLM on text documents and image-caption pairs: the job behind train/pretrain.py.

``pretrain(cfg)`` prepares the bundled world, a tokenizer and shards (``data.prepare``), builds the model, warms up
its vision encoder on the world's scene labels (``metalm.warmup``; standing in for the pretrained encoder MetaLM
docks, then frozen), trains on the shared loop (``train.loop``), and scores greedy captions of held-out images
(``eval.scene``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data.batch import Batch
from data.layout import image_reader
from data.pipeline import BatchStream, PipelineConfig, batches, load_batches
from data.prepare import pipeline_config, prepare_shards, prepare_tokenizer, prepare_world, scene_labels
from data.reader import ReaderStats, expand_urls, iter_samples
from data.tokenizer import SPECIAL_TOKENS, Tokenizer
from data.world import SLOTS
from encoders import ENCODER_KINDS, build_encoder
from encoders.base import IMAGE_TEXT, PIXELS
from eval.scene import caption_split
from metalm import MetaLM
from metalm.config import ATTENTION_BACKENDS, DecoderConfig
from metalm.docking import docked_mask
from metalm.loss import IGNORE_INDEX
from metalm.presets import PRESETS
from metalm.semicausal import semicausal_labels
from metalm.spec import SHARED_VOCAB, SpecError, decoder_tokenizer_dir, merge, resolve_spec
from metalm.warmup import warm_up_on_labels
from train.config import ConfigError, LoopConfig, option, parse_config
from train.loop import (
    Env,
    check_fresh_out,
    checkpoint_root,
    latest_checkpoint,
    saved_config,
    setup_env,
    train,
    validation_loss,
    write_summary,
)

log = logging.getLogger("metalm.pretrain")
PIPELINE_FIELDS = ("seq_len", "batch_size", "text_weight", "span_ratio", "span_min", "span_max", "prefix_max", "seed")
"""The fields of this job's config that set ``data.pipeline.PipelineConfig``'s data fields."""
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # a trained tokenizer's specials and 256 bytes
_OLD_FORM_WARNED: set[str] = set()  # the old-form ``model`` values already warned about


@dataclass
class PretrainConfig(LoopConfig):
    """Pretraining's model and data on top of the loop's settings."""

    # model
    preset: str = option(
        "tiny",
        "named model spec (tiny; tiny-joint: image and caption prefix through one joint encoder; tiny-gpt: tiny's "
        "decoder alone; language-xl, vl-medium: the paper's shapes; language-small: SmolLM2 + MiniLM from assets/, "
        "see python -m metalm.assets)",
        choices=tuple(PRESETS),
    )
    model: dict = option(
        {},
        "model spec merged over the preset (see metalm/spec.py), e.g. {decoder: {n_layers: 6}} or "
        "{encoders: {text: {kind: hf_text, weights: DIR, freeze: all_but_last_2}}} (YAML or JSON)",
    )
    from_hf: str = option("", "decoder from this transformers GPT-2/Llama directory (weights and tokenizer)")
    from_gguf: str = option("", "decoder from this Llama-family GGUF file (dequantized to fp32; needs gguf)")
    text_encoder: str = option(
        "",
        "text encoder from this transformers BERT-like directory with its own tokenizer (all but its last two "
        "layers frozen, linear connector), in place of the spec's text encoder",
    )
    attention: str = option(
        "",
        "decoder attention backend in place of the spec's (auto, sdpa, eager, xformers, or momentum: MoAttn, "
        "attention plus a decaying sum of earlier values); also for a pretrained decoder",
    )
    momentum_eta: float = option(
        0.0, "MoAttn decay eta in (0, 1) in place of the spec's (0: the spec's, 0.9 unless set)", min=0, below=1
    )
    init_from: str = option("", "start from this MetaLM checkpoint directory instead of the spec's weights")
    freeze_decoder: bool = option(
        False,
        "train only the encoders and connectors, the decoder fixed: a warm-up that docks new encoders into a "
        "pretrained language model without changing it",
    )
    # data
    world: str = option("data/world", "bundled world directory; generated there if missing")
    text_shards: str = option("", "text shards (brace pattern, glob or directory); default: built from the world")
    image_shards: str = option("", "image-text shards; default: built from the world")
    tokenizer: str = option(
        "",
        "decoder tokenizer directory (tokenizer.json); default: a pretrained decoder's own, else a BPE trained on "
        "the world's corpus",
    )
    vocab_size: int = option(2048, "vocabulary size when a tokenizer is trained", min=MIN_VOCAB)
    seq_len: int = option(
        256,
        "tokens per training sequence (with images: at least the image's vectors, its two markers and a caption "
        "token; checked once the model is built)",
        min=2,
    )
    batch_size: int = option(16, "sequences per micro-batch on each process", min=1)
    text_weight: float = option(
        0.3, "share of each batch's rows drawn from text documents (the rest image-text)", min=0, max=1
    )
    span_ratio: float = option(
        0.25, "share of text tokens sent through the text encoder as semi-causal spans", min=0, max=1
    )
    span_min: int = option(0, "minimum span length (0: the paper's 64 scaled to seq_len/2048)", min=0)
    span_max: int = option(0, "maximum span length (0: the paper's 128 scaled to seq_len/2048)", min=0)
    prefix_max: float = option(
        0.5, "image-text: the encoded caption prefix is up to this share of the caption", min=0, max=1
    )
    shuffle_buffer: int = option(512, "samples held in the shuffle buffer (0: file order)", min=0)
    num_workers: int = option(
        0,
        "DataLoader worker processes that read, decode, tokenize and collate training batches beside the training "
        "step (0: in the training process); the batch order depends on it, so resume with the same number",
        min=0,
    )
    prefetch_factor: int = option(2, "batches each DataLoader worker builds ahead (with --num_workers)", min=1)
    vision_warmup_steps: int = option(
        200,
        "supervised warm-up of the vision encoder on the world's scene labels "
        "(colour and shape per slot) before docking; the warmed-up encoder is then frozen, a joint "
        "vision-language one trains on (0: off, train it from scratch through the captions)",
        min=0,
    )
    seed: int = option(0, "seed for weights, data order and spans")
    eval_batches: int = option(8, "validation batches per evaluation", min=1)

    def check(self) -> None:
        """The fields' own ranges, then the model spec (every field of it, and that a training row holds one of its
        images) and that the span lengths (given, or scaled from seq_len) make a range."""
        super().check()
        if self.from_hf and self.from_gguf:
            raise ConfigError("from_gguf", "from_hf and from_gguf both given: expected at most one decoder source")
        if self.attention and self.attention not in ATTENTION_BACKENDS:
            raise ConfigError(
                "attention", f"attention = {self.attention!r}: expected one of {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.init_from and (self.attention or self.momentum_eta):
            raise ConfigError("attention", "attention / momentum_eta with init_from: the checkpoint's config sets them")
        try:
            spec = self.spec()
        except SpecError as err:
            raise ConfigError("model", f"model = {self.model!r}: {err}") from None
        if not self.init_from:
            check_seq_len(self.seq_len, image_vectors(spec))
        lo, hi = PipelineConfig(seq_len=self.seq_len, span_min=self.span_min, span_max=self.span_max).span_lengths()
        if lo > hi:
            raise ConfigError(
                "span_max",
                f"span_max = {self.span_max}: expected at least the minimum span length {lo} "
                f"(span_min = {self.span_min}{', scaled from seq_len' if not self.span_min else ''})",
            )

    def spec(self) -> dict[str, Any]:
        """The resolved model spec: the preset, ``model`` merged over it, then the decoder and text-encoder flags.
        A ``model`` of decoder fields alone (the old form, e.g. ``{n_layers: 6}``) still means decoder fields."""
        model = dict(self.model)
        decoder_fields = {f.name for f in fields(DecoderConfig)}
        if model and set(model) <= decoder_fields:
            if repr(model) not in _OLD_FORM_WARNED:  # spec() runs several times a job: say it once
                _OLD_FORM_WARNED.add(repr(model))
                log.warning("model = %r: decoder fields belong under model.decoder now; read them as that", model)
            model = {"decoder": model}
        spec = merge({"preset": self.preset}, model)
        if self.from_hf or self.from_gguf:
            source = {"from_hf": self.from_hf} if self.from_hf else {"from_gguf": self.from_gguf}
            spec = merge(spec, {"decoder": source})
        runtime = {"attention": self.attention, "momentum_eta": self.momentum_eta}
        runtime = {k: v for k, v in runtime.items() if v}
        if runtime:
            spec = merge(spec, {"decoder": runtime})
        if self.text_encoder:
            text = {"kind": "hf_text", "weights": self.text_encoder, "freeze": "all_but_last_2"}
            spec = merge(spec, {"encoders": {"text": {**text, "connector": {"kind": "linear"}}}})
        return resolve_spec(spec, PRESETS)


def parse_pretrain_config(argv: list[str] | None = None, description: str = "") -> PretrainConfig:
    """Pretraining's config from the command line: defaults, then ``--config``, then flags."""
    return parse_config(argv, PretrainConfig, description)


def on_main_first(env: Env, fn: Callable, *args, **kwargs) -> Any:
    """Run ``fn`` on rank 0 while the others wait, then everywhere (it must be idempotent): shared set-up."""
    if env.main:
        result = fn(*args, **kwargs)
    if env.world_size > 1:
        dist.barrier()
    if not env.main:
        result = fn(*args, **kwargs)
    return result


def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> MetaLM:
    """The ``--init_from`` checkpoint, or the spec's model (pretrained parts loaded, the rest seeded from
    ``cfg.seed``), holding the decoder's tokenizer so that its checkpoints carry it."""
    if cfg.init_from:
        model = MetaLM.from_pretrained(cfg.init_from)
    else:
        torch.manual_seed(cfg.seed)
        model, _ = MetaLM.from_spec(cfg.spec(), vocab_size=tokenizer.vocab_size, max_seq_len=cfg.seq_len)
    if cfg.freeze_decoder:
        model.decoder.requires_grad_(False)
    model.decoder_tokenizer = tokenizer.backend
    return model


def job_tokenizer(cfg: PretrainConfig, world: Path) -> Tokenizer:
    """``--tokenizer``, else the tokenizer of the checkpoint or the pretrained decoder, else one trained on the
    world (a GGUF decoder is converted here, once, into the cache: see ``metalm.spec.gguf_cache_dir``)."""
    source = cfg.tokenizer or cfg.init_from
    if not source:
        found = decoder_tokenizer_dir(cfg.spec())
        source = str(found) if found is not None else ""
    return prepare_tokenizer(world, source, cfg.vocab_size)


def job_pipeline_config(cfg: PretrainConfig, model: MetaLM) -> PipelineConfig:
    """The batch layout of this job's data for ``model``, once ``seq_len`` is known to fit it (``check_seq_len``)."""
    name = image_reader(model)
    check_seq_len(cfg.seq_len, model.encoders[name].num_tokens if name is not None else 0)
    return pipeline_config(model, **{name: getattr(cfg, name) for name in PIPELINE_FIELDS})


def image_vectors(spec: dict[str, Any]) -> int:
    """How many vectors one image of the spec's image encoder (a vision or a joint vision-language encoder) docks
    (0 without one), from its architecture built on the meta device: no weights are read or allocated."""
    for enc in spec["encoders"].values():
        if ENCODER_KINDS[enc["kind"]].reads in (PIXELS, IMAGE_TEXT):
            args = {**{arg: 1 for arg in SHARED_VOCAB.get(enc["kind"], ())}, **enc.get("args", {})}
            with torch.device("meta"):
                return build_encoder(enc["kind"], **args).num_tokens
    return 0


def check_seq_len(seq_len: int, vectors: int) -> None:
    """Raise a ConfigError unless an image-text row of ``seq_len`` tokens holds ``<image>``, the ``vectors`` of
    one image, ``</image>`` and a caption token: a shorter row docks the image past the row's end, or keeps no
    caption to learn from."""
    if not vectors:
        return
    if seq_len < vectors + 3:
        raise ConfigError(
            "seq_len",
            f"seq_len = {seq_len}: expected at least {vectors + 3} for this model: an image-text row holds "
            f"<image>, the image's {vectors} vectors, </image> and at least one caption token",
        )


def warm_up_vision(model: MetaLM, world: Path, pcfg: PipelineConfig, steps: int, seed: int) -> dict[str, float]:
    """Supervised warm-up of the image encoder (vision, or joint with an empty text prefix) on the world's scene
    labels (colour and shape in each slot); returns the held-out accuracy of the colour and of the shape labels."""
    pixels, labels, sizes = scene_labels(world, pcfg)
    acc = warm_up_on_labels(model.encoders[pcfg.image_encoder], pixels, labels, sizes, steps, seed)
    n = len(SLOTS)
    return {"color_accuracy": sum(acc[:n]) / n, "shape_accuracy": sum(acc[n:]) / n}


def warn_if_workers_changed(cfg: PretrainConfig) -> None:
    """Resume is exact only with the number of DataLoader workers the run started with (the batch order depends on
    it, see ``data.pipeline.BatchStream``); another number still trains, on a different order, so this warns."""
    ckpt = latest_checkpoint(cfg)
    config = saved_config(ckpt) if ckpt is not None else None
    if config is None:
        return
    saved = config.get("num_workers", 0)
    if saved != cfg.num_workers:
        log.warning(
            "--resume: %s was saved with num_workers = %d but this run has %d; the data order differs from "
            "an uninterrupted run (resume with --num_workers %d for exact resume)",
            ckpt,
            saved,
            cfg.num_workers,
            saved,
        )


def unigram_loss(batch_iter: Iterator, n_batches: int, counts: Counter, vocab: int) -> float:
    """Cross-entropy (nats/token) of a unigram model (add-one smoothed training counts) on the same targets."""
    total = sum(counts.values()) + vocab
    nll, n = 0.0, 0
    for _ in range(n_batches):
        batch = next(batch_iter)
        docked = docked_mask(batch.docks, *batch.labels.shape, batch.labels.device)
        labels = semicausal_labels(batch.labels, docked, batch.attention_mask)
        for t in labels[:, 1:][labels[:, 1:] != IGNORE_INDEX].tolist():
            nll -= math.log((counts[t] + 1) / total)
            n += 1
    return nll / max(n, 1)


def pretrain(cfg: PretrainConfig) -> dict:
    """The whole pretraining job; returns (and writes to ``out/summary.json``) what the model learned. The config
    is checked first, so a bad value stops the job before any work."""
    cfg.check()
    env = setup_env()
    logging.basicConfig(level=logging.INFO if env.main else logging.WARNING, format="%(message)s")
    check_fresh_out(cfg)  # before the set-up: an --out holding an unfinished run is refused at once
    world = on_main_first(env, prepare_world, cfg.world, cfg.seed)
    tokenizer = on_main_first(env, job_tokenizer, cfg, world)
    text_train, caption_train = on_main_first(env, prepare_shards, world, "train")
    text_train = expand_urls(cfg.text_shards) if cfg.text_shards else text_train
    caption_train = expand_urls(cfg.image_shards) if cfg.image_shards else caption_train
    text_val, caption_val = on_main_first(env, prepare_shards, world, "val")
    model = build_model(cfg, tokenizer)
    pcfg = job_pipeline_config(cfg, model)
    stats = ReaderStats()
    vision_warmup = {}
    if cfg.vision_warmup_steps and pcfg.image_encoder and not cfg.init_from:
        vision_warmup = warm_up_vision(model, world, pcfg, cfg.vision_warmup_steps, cfg.seed)
        if pcfg.vision_encoder:
            model.config.encoders[pcfg.vision_encoder].freeze = "all"
            model.apply_freeze()
        else:  # a joint encoder keeps training: its text side learns only from the captions
            vision_warmup["frozen"] = False
        if env.main:
            log.info(
                "vision warm-up: colour accuracy %.2f, shape accuracy %.2f (held-out scenes); %s",
                vision_warmup["color_accuracy"],
                vision_warmup["shape_accuracy"],
                "encoder frozen" if pcfg.vision_encoder else "joint encoder trains on",
            )

    def train_batches(skip: int, num_workers: int = cfg.num_workers, counts: ReaderStats = stats) -> Iterator[Batch]:
        stream = BatchStream(
            text_train,
            caption_train,
            tokenizer,
            pcfg,
            skip=skip,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
            resample=True,
            rank=env.rank,
            world_size=env.world_size,
        )
        return load_batches(
            stream, num_workers, prefetch_factor=cfg.prefetch_factor, pin_memory=env.device.type == "cuda", stats=counts
        )

    # the same validation batches every evaluation: built once
    val_iter = batches(iter_samples(text_val, resample=True), iter_samples(caption_val, resample=True), tokenizer, pcfg)
    val = [next(val_iter) for _ in range(cfg.eval_batches)]

    counts: Counter = Counter()
    # the unigram counts read the first batches in-process (training's own with --num_workers 0; the same data with
    # no workers to start and stop for them otherwise), counting skips apart: the summary reports what training read
    sample_iter = train_batches(0, num_workers=0, counts=ReaderStats())
    for _ in range(16):
        batch = next(sample_iter)
        counts.update(batch.input_ids[batch.attention_mask.bool()].tolist())
    baseline = unigram_loss(iter(val), len(val), counts, tokenizer.vocab_size)
    val_loss = validation_loss(val.__getitem__, len(val), env.device)

    def evaluate(m: MetaLM, step: int) -> dict[str, float]:
        return {**val_loss(m, step), "unigram_loss": baseline}

    if cfg.resume and env.main:
        warn_if_workers_changed(cfg)
    result = train(cfg, model, train_batches, env, evaluate)
    summary = {
        **result.run_summary(),
        "reader": {"samples": stats.samples, "skipped": dict(stats.skipped)},
        "vision_warmup": vision_warmup,
    }
    if result.final_dir is not None and env.main:
        summary.update(result.final_losses(), unigram_loss=baseline)
        for split in ("heldout", "val") if pcfg.image_encoder else ():  # a text-only model has nothing to caption
            summary[f"{split}_captions"] = caption_split(model.eval(), tokenizer, pcfg, world, env.device, split)
    if env.main:
        write_summary(cfg.out, summary)
        if result.final_dir is not None:
            report(summary, cfg)
        else:
            report_stopped(summary, cfg)
    return summary


def report_stopped(summary: dict, cfg: PretrainConfig) -> None:
    """Print how a run that a signal stopped early ended: where it can continue from, and the samples it skipped."""
    print(
        f"\nstopped early by {summary['stop_signal']} at step {summary['steps']} of {summary['max_steps']}: "
        f"checkpoint saved in {checkpoint_root(cfg)}; continue with --resume (exit code {summary['exit_code']})"
    )
    skipped = summary["reader"]["skipped"]
    if skipped:
        print(f"skipped samples: {skipped}")


def report(summary: dict, cfg: PretrainConfig) -> None:
    """Print what the run learned: losses against the unigram baseline, the warm-up, and example captions."""
    print(f"\nfinal checkpoint: {summary['final']}  (MetaLM.from_pretrained loads it)")
    print(
        f"training loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} over {summary['steps']} steps; "
        f"validation loss {summary['val_loss']:.3f} vs unigram baseline {summary['unigram_loss']:.3f} nats/token"
    )
    if summary["vision_warmup"]:
        w = summary["vision_warmup"]
        print(
            f"vision warm-up on scene labels: colour {w['color_accuracy']:.0%}, shape {w['shape_accuracy']:.0%} "
            f"on held-out scenes ({'encoder then frozen' if w.get('frozen', True) else 'joint encoder trains on'})"
        )
    skipped = summary["reader"]["skipped"]
    if skipped:
        print(f"skipped samples: {skipped}")
    if "heldout_captions" not in summary:
        print(f"loss curve: {Path(cfg.out) / 'loss.png'}; metrics: {Path(cfg.out) / 'metrics.jsonl'}")
        return
    held, val = summary["heldout_captions"], summary["val_captions"]
    print(
        f"greedy captions of {held['n']} held-out images: the right set of shapes in {held['shapes_named']:.0%}, "
        f"of colours in {held['colors_named']:.0%} (validation images with seen pairs: shapes "
        f"{val['shapes_named']:.0%}, colours {val['colors_named']:.0%}); they name the unseen colour-shape pair "
        f"itself in {held['unseen_pair_named']:.0%}. For example:"
    )
    for row in held["examples"]:
        truth = ", ".join(" ".join(t) for t in row["scene"])
        mark = "right shapes" if row["shapes_named"] else "wrong shapes"
        print(f"  {row['image']}: {row['caption']!r}   (scene: {truth}; {mark})")
    print(f"loss curve: {Path(cfg.out) / 'loss.png'}; metrics: {Path(cfg.out) / 'metrics.jsonl'}")


COMPOSE_FIELDS = ("preset", "model", "from_hf", "from_gguf", "text_encoder", "tokenizer")
"""The spec flags of ``train/compose.py``: pretraining's model fields and its decoder tokenizer."""


def compose(given: dict[str, str], seed: int, out: str | Path) -> Path:
    """Build the model of the spec flags ``given`` (text, as flags give them) and save it to ``out`` untrained,
    with its tokenizers; the decoder's tokenizer is ``tokenizer`` or the pretrained decoder's own."""
    cfg = parse_pretrain_config([arg for name, value in given.items() for arg in (f"--{name}", value)])
    source = cfg.tokenizer or decoder_tokenizer_dir(cfg.spec())
    if not source:
        raise ConfigError("tokenizer", "the spec's decoder is not pretrained, so it has no tokenizer: give --tokenizer")
    torch.manual_seed(seed)
    model = build_model(cfg, Tokenizer.load(source))
    model.save_pretrained(out)
    return Path(out)
