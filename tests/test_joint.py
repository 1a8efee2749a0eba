"""The joint vision-language layout: an image and a caption prefix read by one bidirectional encoder (the paper's
vision-language MetaLM), beside today's separate-encoders layout, whose batches it must leave bit-identical."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic import batch_fingerprint, tiny_metalm

from data.layout import image_text_ids
from data.pipeline import PipelineConfig, batches
from data.prepare import pipeline_config
from data.prompts import EncodedSeg, ImageSeg, PromptEncoder
from data.tokenizer import Tokenizer
from data.world import generate_world
from encoders.tokenization import DECODER_TOKENIZER
from eval.scene import caption
from eval.scoring import Scorer
from eval.settings import DecodeSettings
from metalm import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLM, MetaLMConfig
from metalm.docking import Dock
from metalm.loss import IGNORE_INDEX
from metalm.presets import get_preset
from train.config import ConfigError
from train.pretraining import PretrainConfig, job_pipeline_config, pretrain, warm_up_vision

PHRASES = ["a red circle", "two blue squares", "the green triangle is left", "nothing in the middle", "on the right"]
PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def texts(seed: int):
    """Endless text samples of one to three paragraphs of stock phrases."""
    rng = random.Random(seed)
    while True:
        paragraphs = [" ".join(rng.choices(PHRASES, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 3))]
        yield {"kind": "text", "text": "\n\n".join(paragraphs)}


def pictures(seed: int, size: int = 8):
    """Endless caption samples: a two-colour image and a caption of stock phrases."""
    rng = random.Random(seed)
    while True:
        image = Image.new("RGB", (size, size), rng.choice(PALETTE))
        image.paste(rng.choice(PALETTE), (0, 0, size // 2, size // 2))
        yield {"kind": "caption", "image": image, "caption": " ".join(rng.choices(PHRASES, k=rng.randint(1, 4)))}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    docs = texts(0)
    return Tokenizer.train([next(docs)["text"] for _ in range(100)], vocab_size=300)


def separate_cfg(**kw) -> PipelineConfig:
    """Today's layout: a vision encoder for the image, the shared-tokenizer text encoder for spans and prefixes."""
    base = dict(seq_len=40, batch_size=4, text_weight=0.5, image_size=(8, 8), image_tokens=5, span_min=2, span_max=5)
    return PipelineConfig(**{**base, **kw})


PINNED = {  # the first four batches, pinned at a4287d3 (before the joint layout existed) and re-hashed with
    # synthetic.batch_fingerprint once the joint layout had landed with the pinned hashes still matching
    "vision+text": ["871ff20edf392ceb", "84844db66d674203", "82450ed80dca2610", "4a87b59a8313785b"],
    "vision": ["ebdd6509cc4b997c", "af05a5153905079c", "cb756564b7ad003f", "fea33f35a064ab04"],
    "text": ["9a587d77256a92f9", "fe8ac571bff6e59f", "77406d913e09755a", "d7de28647bf92490"],
}
LAYOUTS = {
    "vision+text": {},
    "vision": {"text_encoder": None, "seq_len": 24},
    "text": {"vision_encoder": None, "prefix_max": 0.9},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_separate_encoders_layout_gives_the_batches_it_always_did(tokenizer, layout):
    """The shared-tokenizer layout's first batches are the pinned ones: the joint layout changes not a bit of them,
    nor the order of the span RNG's draws."""
    stream = batches(texts(1), pictures(2), tokenizer, separate_cfg(**LAYOUTS[layout]))
    assert [batch_fingerprint(next(stream)) for _ in range(4)] == PINNED[layout]


# ---------------------------------------------------------------- the joint layout


def joint_model(vocab: int, seed: int = 0, max_len: int = 48) -> MetaLM:
    """A small MetaLM in the tiny-joint shape: a joint encoder on 8x8 images (4x4 patches: 5 image vectors) that
    shares the decoder's tokenizer, and a native text encoder for the text rows' spans; eval mode."""
    joint = EncoderConfig(
        "joint_vl",
        dict(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, image_size=8, patch_size=4, max_text_len=max_len),
        connector=ConnectorConfig("mlp"),
    )
    text = EncoderConfig(
        "native_text",
        dict(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, max_len=max_len),
        connector=ConnectorConfig(),
    )
    decoder = DecoderConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=max_len, init_std=0.2)
    torch.manual_seed(seed)
    return MetaLM(MetaLMConfig(decoder, {"joint": joint, "text": text})).eval()


def joint_cfg(model: MetaLM, **kw) -> PipelineConfig:
    return pipeline_config(model, **{"seq_len": 40, "batch_size": 4, "span_min": 2, "span_max": 5, **kw})


def test_the_model_picks_the_joint_layout_by_what_its_encoders_read(tokenizer):
    model = joint_model(tokenizer.vocab_size)
    c = joint_cfg(model)
    assert (c.joint_encoder, c.vision_encoder, c.text_encoder) == ("joint", None, "text")
    assert (c.image_tokens, c.image_size, c.image_mean) == (5, (8, 8), (0.5, 0.5, 0.5))
    renamed = joint_model(tokenizer.vocab_size)
    renamed.encoders = torch.nn.ModuleDict({"pictures": model.encoders["joint"], "words": model.encoders["text"]})
    assert (joint_cfg(renamed).joint_encoder, joint_cfg(renamed).text_encoder) == ("pictures", "words")
    both = joint_model(tokenizer.vocab_size)
    both.encoders["vision"] = tiny_metalm(tokenizer.vocab_size, encoders=("vision",)).encoders["vision"]
    with pytest.raises(ValueError, match="'vision' and a joint vision-language encoder 'joint'"):
        joint_cfg(both)


def test_an_image_and_its_prefix_dock_as_one_joint_segment(tokenizer):
    """One segment per image-caption item: the image slots, then the prefix's slots (the decoder ids there are what
    the encoder reads); an item with an empty prefix reads one masked pad; text rows keep their own spans."""
    model = joint_model(tokenizer.vocab_size)
    c = joint_cfg(model, prefix_max=0.4)
    seen_empty = seen_prefix = 0
    stream = batches(texts(3), pictures(4), tokenizer, c)
    for batch in [next(stream) for _ in range(6)]:
        joint = next(d for d in batch.docks if d.encoder == "joint")
        text = next(d for d in batch.docks if d.encoder == "text")
        assert joint.tokenizer == DECODER_TOKENIZER and set(text.batch_index.tolist()) <= {0, 1}
        width = joint.inputs["input_ids"].shape[1]
        assert joint.positions.shape[1] == c.image_tokens + width and width >= 1
        for i, row in enumerate(joint.batch_index.tolist()):
            image, prefix = joint.positions[i, : c.image_tokens], joint.positions[i, c.image_tokens :]
            assert batch.input_ids[row, image[0] - 1] == tokenizer.image_start_id
            assert (batch.input_ids[row, image] == tokenizer.vec_id).all()
            real = prefix[prefix >= 0]
            assert torch.equal(joint.inputs["attention_mask"][i].bool(), prefix >= 0)
            assert torch.equal(joint.inputs["input_ids"][i, : len(real)], batch.input_ids[row, real])
            if len(real):
                assert real[0] == image[-1] + 2 and batch.input_ids[row, image[-1] + 1] == tokenizer.image_end_id
                assert torch.equal(real, torch.arange(int(real[0]), int(real[0]) + len(real)))
            seen_empty += not len(real)
            seen_prefix += bool(len(real))
    assert seen_empty and seen_prefix
    with torch.no_grad():
        out = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
    assert torch.isfinite(out.loss)


def test_an_all_empty_prefix_batch_still_docks(tokenizer):
    """prefix_max 0: every item is the image alone, and the joint encoder reads a one-column, all-masked prefix."""
    model = joint_model(tokenizer.vocab_size)
    batch = next(batches(texts(5), pictures(6), tokenizer, joint_cfg(model, prefix_max=0.0)))
    joint = next(d for d in batch.docks if d.encoder == "joint")
    assert joint.inputs["input_ids"].shape[1] == 1 and not joint.inputs["attention_mask"].any()
    assert (joint.positions[:, -1] == -1).all()
    with torch.no_grad():
        assert torch.isfinite(model(batch.input_ids, batch.docks, batch.attention_mask).logits).all()


def reread(dock: Dock, ids: torch.Tensor) -> Dock:
    """The same dock with its ``input_ids`` re-read from the decoder ids ``ids`` at their positions (the last
    columns of ``positions``: a joint dock's image slots come first), as the layout would build them."""
    if "input_ids" not in dock.inputs:
        return dock
    enc = dock.inputs["input_ids"].clone()
    text = dock.positions[:, -enc.shape[1] :]
    valid = text >= 0
    enc[valid] = ids[dock.batch_index[:, None].expand_as(text)[valid], text[valid]]
    return replace(dock, inputs={**dock.inputs, "input_ids": enc})


def leaks(model: MetaLM, batch, vocab: int) -> tuple[int, list[tuple[int, int]]]:
    """(targets checked, the targets whose predicting logits change when the target itself is replaced in the
    input and in every encoder input that holds it)."""
    with torch.no_grad():
        base = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels, return_logits=True)
        counted = (base.labels[:, 1:] != IGNORE_INDEX).nonzero() + torch.tensor([0, 1])
        bad = []
        for row, t in counted.tolist():
            ids = batch.input_ids.clone()
            ids[row, t] = (ids[row, t] + 1) % vocab
            logits = model(ids, [reread(d, ids) for d in batch.docks], batch.attention_mask).logits
            if not torch.allclose(logits[row, t - 1], base.logits[row, t - 1], atol=1e-5, rtol=0):
                bad.append((row, t))
    return len(counted), bad


@pytest.mark.parametrize("seed", [0, 1])
def test_no_leak_on_joint_layout_batches(tokenizer, seed):
    """For every loss-counted target x_t of a joint-layout batch, replacing x_t in the input (and in any encoder
    input that holds it) leaves the logits that predict it unchanged: the joint encoder's image vectors have seen
    the prefix, so no prefix token may be a target, and the token after the prefix is predicted from its end."""
    model = joint_model(tokenizer.vocab_size, seed=seed)
    c = joint_cfg(model, prefix_max=0.8, seed=seed)
    batch = next(batches(texts(10 + seed), pictures(20 + seed), tokenizer, c))
    checked, bad = leaks(model, batch, tokenizer.vocab_size)
    assert checked > 60 and bad == []


def test_the_no_leak_check_catches_a_prefix_docked_one_slot_early(tokenizer):
    """The check has teeth: dock each prefix's vectors one position early (so the prefix's last token is an
    undocked target whose predicting position, docked, holds a vector that read it) and it reports leaks."""
    model = joint_model(tokenizer.vocab_size)
    batch = next(batches(texts(11), pictures(21), tokenizer, joint_cfg(model, prefix_max=0.8)))
    joint = next(d for d in batch.docks if d.encoder == "joint")
    shifted = joint.positions.clone()
    text = shifted[:, 5:]
    text[text >= 0] -= 1
    leaky = replace(joint, positions=shifted)
    leaky_batch = replace(batch, docks=[leaky if d is joint else d for d in batch.docks])
    _, bad = leaks(model, leaky_batch, tokenizer.vocab_size)
    assert bad


# ---------------------------------------------------------------- prompts, captions, pretraining


def test_prompts_read_an_image_and_the_encoded_text_after_it_through_the_joint_encoder(tokenizer):
    """A prompt's image docks through the joint encoder, with the encoder-read text right after it as its prefix,
    where pretraining puts an image-caption item's; other encoder-read text goes to the text encoder."""
    model = joint_model(tokenizer.vocab_size)
    prompts = PromptEncoder(model, tokenizer)
    assert (prompts.vision, prompts.joint, prompts.text, prompts.image_tokens) == ("joint", True, "text", 5)
    image = next(pictures(7))["image"]
    caption = tokenizer.encode("a red circle")
    encoded = prompts.encode([ImageSeg(image), EncodedSeg("a red circle"), " on the right", EncodedSeg("two")])
    ids, mask, docks = prompts.collate([encoded, prompts.encode([ImageSeg(image)])])
    joint, text = docks
    _, start = image_text_ids(tokenizer, 5, caption)
    prefix = list(range(start, start + len(caption)))
    assert joint.encoder == "joint" and text.encoder == "text"
    assert joint.positions[0].tolist() == [1, 2, 3, 4, 5] + prefix
    assert joint.inputs["input_ids"][0].tolist() == caption
    assert joint.positions[1].tolist() == [1, 2, 3, 4, 5] + [-1] * len(caption)  # the image alone
    assert not joint.inputs["attention_mask"][1].any()
    assert text.batch_index.tolist() == [0] and text.positions[0, 0] == len(encoded.ids) - len(tokenizer.encode("two"))
    with torch.no_grad():
        assert torch.isfinite(model(ids, docks, mask).logits).all()


def test_a_joint_model_without_a_text_encoder_reads_only_prefixes(tokenizer):
    model = joint_model(tokenizer.vocab_size)
    del model.encoders["text"]
    prompts = PromptEncoder(model, tokenizer)
    image = next(pictures(8))["image"]
    ids, mask, docks = prompts.collate([prompts.encode([ImageSeg(image), EncodedSeg("a red circle")])])
    assert [d.encoder for d in docks] == ["joint"]
    with pytest.raises(ValueError, match="encoder-read text but this model has no text encoder"):
        prompts.encode(["a", EncodedSeg("red circle")])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    generate_world(out, seed=0, n_train=60, n_val=4, n_test=4, n_heldout=4, n_docs=30)
    return out


def test_tiny_joint_pretrains_saves_reloads_and_captions(world, tmp_path):
    """``--preset tiny-joint`` end to end on the bundled world: the joint encoder is warmed up on scene labels
    (image alone) and keeps training, the loss goes down, the checkpoint reloads to the same model, and it
    captions held-out images."""
    cfg = PretrainConfig(
        preset="tiny-joint",
        world=str(world),
        out=str(tmp_path / "run"),
        max_steps=20,
        warmup_steps=5,
        seq_len=64,
        batch_size=4,
        eval_batches=1,
        eval_every=0,
        log_every=5,
        shuffle_buffer=16,
        vision_warmup_steps=3,
        peak_flops=1e11,
        model={"dim": 64, "n_layers": 2, "n_heads": 2},
    )
    summary = pretrain(cfg)
    assert summary["steps"] == 20 and summary["last_loss"] < summary["first_loss"] - 1.0
    assert summary["vision_warmup"]["frozen"] is False
    assert summary["heldout_captions"]["n"] == 4
    model = MetaLM.from_pretrained(summary["final"])
    assert model.config.encoders["joint"].kind == "joint_vl" and set(model.encoders) == {"joint", "text"}
    assert all(p.requires_grad for p in model.encoders["joint"].parameters())
    tokenizer = Tokenizer.load(summary["final"])
    pcfg = pipeline_config(model, seq_len=64, batch_size=4)
    assert pcfg.joint_encoder == "joint" and pcfg.image_tokens == 17
    first = "images/heldout/000000.png"  # the first row of its group, so always among the summary's examples
    with Image.open(world / first) as img:
        text = caption(model, tokenizer, pcfg, img.convert("RGB"), torch.device("cpu"))
    trained = {row["image"]: row["caption"] for row in summary["heldout_captions"]["examples"]}
    assert text and text == trained[first]  # the reloaded model captions as the trained one did
    scorer = Scorer(model, tokenizer, progress=False)  # evaluation's prompts: the image alone, or with encoded text
    settings = DecodeSettings(max_new_tokens=24, stop=())
    with Image.open(world / first) as img:
        image = img.convert("RGB")
    assert scorer.generate([[ImageSeg(image)]], settings) == [text]
    answers = scorer.generate([[ImageSeg(image)], [ImageSeg(image), EncodedSeg("a red")]], settings)
    assert all(isinstance(answer, str) for answer in answers)


def test_seq_len_check_and_warm_up_read_the_joint_encoder(tmp_path):
    """``check_seq_len`` counts the joint encoder's image vectors, and the vision warm-up trains its image side
    (the image read with an empty prefix) and leaves its ``requires_grad`` flags as they were."""
    model = MetaLM(get_preset("tiny-joint", vocab_size=64, dim=32, n_layers=1, n_heads=2))
    with pytest.raises(ConfigError, match="expected at least 20 for this model"):
        job_pipeline_config(PretrainConfig(seq_len=19), model)
    world = generate_world(tmp_path / "w", seed=1, n_train=20, n_val=4, n_test=4, n_heldout=4, n_docs=4)
    joint = model.encoders["joint"]
    joint.token_embedding.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in joint.named_parameters()}
    accuracy = warm_up_vision(model, world, job_pipeline_config(PretrainConfig(), model), steps=2, seed=0)
    assert set(accuracy) == {"color_accuracy", "shape_accuracy"}
    changed = {name for name, p in joint.named_parameters() if not torch.equal(p, before[name])}
    assert {"patch_embed.weight", "cls_token", "image_position"} <= changed
    assert not joint.token_embedding.weight.requires_grad and joint.patch_embed.weight.requires_grad
