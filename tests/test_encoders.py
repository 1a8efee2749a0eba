"""Encoders: parity with the libraries they wrap, checkpoint loading, freezing, meta builds, masks and rebuilds."""

from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from encoders import (
    HFTextEncoder,
    JointVisionLanguageEncoder,
    NativeTextEncoder,
    OpenClipVision,
    TimmVision,
    apply_freeze,
    build_encoder,
    encoder_spec,
    minilm_path,
)
from encoders.base import DECODER_IDS, IMAGE_TEXT, OWN_IDS, PIXELS, READS, Encoder
from encoders.registry import ENCODER_KINDS

ATOL = 1e-5
OC_VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32}
OC_KW = {"embed_dim": 32, "vision_cfg": OC_VISION}
OC_TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
TIMM_NAME = "vit_base_patch16_224"
TIMM_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2}
HF_CONFIGS = {
    "bert": lambda: transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
    "roberta": lambda: transformers.RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=70,
        pad_token_id=1,
    ),
    "electra": lambda: transformers.ElectraConfig(
        vocab_size=99,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
}


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two right-padded texts of 7 and 4 real tokens (ids 5..98, clear of special ids)."""
    ids = torch.randint(5, 99, (2, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return {"input_ids": ids * mask, "attention_mask": mask}


def clip_reference(**vision_overrides) -> torch.nn.Module:
    """A tiny random open_clip CLIP built by open_clip itself, as the ground truth."""
    torch.manual_seed(0)
    vision = {**OC_VISION, **vision_overrides}
    return open_clip.create_model("ViT-B-16", embed_dim=32, vision_cfg=vision, text_cfg=OC_TEXT).eval()


def timm_reference(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(TIMM_NAME, pretrained=False, **{"num_classes": 0, **TIMM_KW, **overrides}).eval()


def hf_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(HF_CONFIGS[name]()).eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return str(path), model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def vit_block_params(width: int, mlp: int) -> int:
    """Pre-norm ViT block: 2 LayerNorms, fused qkv + out projection, 2-layer MLP (all with biases)."""
    return 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * width * mlp + mlp + width


# --- one tiny instance of every encoder kind, with inputs and the parameters all_but_last_2 must leave trainable


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return hf_dir(tmp_path_factory, "bert")


def _case(kind: str, bert_dir) -> tuple[Encoder, dict[str, torch.Tensor], tuple[str, ...]]:
    torch.manual_seed(1)
    joint_kw = {"vocab_size": 99, "dim": 32, "n_layers": 3, "n_heads": 2}
    if kind == "open_clip":
        enc = OpenClipVision("ViT-B-16", **OC_KW)
        return (
            enc,
            {"pixel_values": pixels()},
            ("visual.transformer.resblocks.1.", "visual.transformer.resblocks.2.", "visual.ln_post."),
        )
    if kind == "timm":
        enc = TimmVision(TIMM_NAME, **TIMM_KW)
        return enc, {"pixel_values": pixels()}, ("model.blocks.1.", "model.blocks.2.", "model.norm.")
    if kind == "hf_text":
        return HFTextEncoder(bert_dir[0]), text_batch(), ("model.encoder.layer.1.", "model.encoder.layer.2.")
    last2 = ("encoder.layers.1.", "encoder.layers.2.", "norm.")
    if kind == "native_text":
        return NativeTextEncoder(max_len=16, **joint_kw), text_batch(), last2
    enc = JointVisionLanguageEncoder(image_size=32, patch_size=8, max_text_len=16, **joint_kw)
    return enc, {"pixel_values": pixels(), **text_batch()}, last2


KINDS = ["open_clip", "timm", "hf_text", "native_text", "joint_vl"]


@pytest.fixture(params=KINDS)
def case(request, bert_dir):
    return (request.param, *_case(request.param, bert_dir))


# --- open_clip


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_open_clip_tokens_match_open_clip(tmp_path, pool_type):
    ref = clip_reference(pool_type=pool_type)
    ckpt = tmp_path / "clip.pt"
    torch.save(ref.state_dict(), ckpt)  # a full CLIP checkpoint, text tower included
    enc = OpenClipVision(
        "ViT-B-16", checkpoint=str(ckpt), embed_dim=32, vision_cfg={**OC_VISION, "pool_type": pool_type}
    )
    enc.eval()
    x = pixels()
    with torch.no_grad():
        ref.visual.output_tokens = True
        _, ref_tokens = ref.visual(x)
        ref.visual.output_tokens = False
        ref_pooled = ref.encode_image(x)
        out = enc({"pixel_values": x})
    assert out.hidden_states.shape == (2, 17, 64) and enc.num_tokens == 17 and enc.output_dim == 64
    assert close(out.hidden_states[:, 1:], ref_tokens)
    pooled = out.hidden_states[:, 0] if pool_type == "tok" else out.hidden_states[:, 1:].mean(dim=1)
    assert close(pooled @ ref.visual.proj, ref_pooled)
    assert out.mask.dtype == torch.bool and bool(out.mask.all())


def test_open_clip_without_cls_returns_patches_only(tmp_path):
    ref = clip_reference()
    ckpt = tmp_path / "clip.pt"
    torch.save(ref.state_dict(), ckpt)
    enc = OpenClipVision("ViT-B-16", checkpoint=str(ckpt), include_cls=False, **OC_KW).eval()
    with torch.no_grad():
        ref.visual.output_tokens = True
        _, ref_tokens = ref.visual(pixels())
        out = enc({"pixel_values": pixels()})
    assert enc.num_tokens == 16 and close(out.hidden_states, ref_tokens)


def test_open_clip_loads_own_safetensors_checkpoint(tmp_path):
    torch.manual_seed(3)
    source = OpenClipVision("ViT-B-16", **OC_KW).eval()
    ckpt = tmp_path / "visual.safetensors"
    save_file(source.state_dict(), str(ckpt))
    loaded = OpenClipVision("ViT-B-16", checkpoint=str(ckpt), **OC_KW).eval()
    fresh = OpenClipVision("ViT-B-16", **OC_KW).eval()
    x = {"pixel_values": pixels()}
    with torch.no_grad():
        want, got, other = source(x).hidden_states, loaded(x).hidden_states, fresh(x).hidden_states
    assert close(got, want) and not close(other, want)


def test_open_clip_missing_checkpoint_names_path(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        OpenClipVision("ViT-B-16", checkpoint=missing, **OC_KW)


@pytest.mark.parametrize("name, message", [("RN50", "ModifiedResNet"), ("coca_ViT-B-32", "attentional pooling")])
def test_open_clip_rejects_towers_without_patch_tokens(name, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        OpenClipVision(name)


def test_open_clip_vit_b16_on_meta_has_exact_param_count():
    with torch.device("meta"):
        enc = OpenClipVision("ViT-B-16")
    assert all(p.is_meta for p in enc.parameters())
    width, grid = 768, 224 // 16
    expected = (
        3 * 16 * 16 * width  # conv1, no bias
        + width  # class embedding
        + (grid * grid + 1) * width  # positions
        + 2 * width  # ln_pre
        + 12 * vit_block_params(width, 4 * width)
        + 2 * width  # ln_post (the projection to the CLIP space is dropped)
    )
    assert n_params(enc) == expected
    assert 85e6 < expected < 87e6
    assert enc.image_size == (224, 224) and enc.num_tokens == grid * grid + 1 and enc.output_dim == width


# --- timm


def test_timm_tokens_match_forward_features_and_checkpoint_with_head_loads(tmp_path):
    ref = timm_reference(num_classes=10)  # a classifier checkpoint: its head weights must be skipped
    ckpt = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), ckpt)
    enc = TimmVision(TIMM_NAME, checkpoint=str(ckpt), **TIMM_KW).eval()
    fresh = TimmVision(TIMM_NAME, **TIMM_KW).eval()
    x = {"pixel_values": pixels()}
    with torch.no_grad():
        want = ref.forward_features(x["pixel_values"])
        got, other = enc(x).hidden_states, fresh(x).hidden_states
    assert want.shape == (2, 17, 64) and enc.num_tokens == 17
    assert close(got, want) and not close(other, want)


def test_timm_without_cls_drops_all_prefix_tokens(tmp_path):
    ref = timm_reference(reg_tokens=2)  # class token + 2 registers
    ckpt = tmp_path / "vit.safetensors"
    save_file(ref.state_dict(), str(ckpt))
    enc = TimmVision(TIMM_NAME, checkpoint=str(ckpt), include_cls=False, reg_tokens=2, **TIMM_KW).eval()
    with torch.no_grad():
        want = ref.forward_features(pixels())[:, 3:]
        got = enc({"pixel_values": pixels()}).hidden_states
    assert enc.num_tokens == 16 and close(got, want)


@pytest.mark.parametrize("pool", [{"global_pool": "avg", "fc_norm": True}, {"global_pool": "map"}])
def test_timm_pooling_heads_leave_no_unused_parameters(tmp_path, pool):
    ref = timm_reference(**pool)
    ckpt = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), ckpt)
    enc = TimmVision(TIMM_NAME, checkpoint=str(ckpt), **pool, **TIMM_KW)
    x = pixels()
    features = ref.forward_features(x)
    if pool["global_pool"] == "avg":  # the final norm lives in fc_norm: every token gets it
        features = ref.fc_norm(features)
        assert enc.model.fc_norm in enc.head_modules()
    assert not any("attn_pool" in name for name, _ in enc.named_parameters())
    out = enc({"pixel_values": x}).hidden_states
    assert close(out.detach(), features.detach())
    out.square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_timm_rejects_non_vit_and_missing_checkpoint(tmp_path):
    with torch.device("meta"), pytest.raises(ValueError, match="token-sequence"):
        TimmVision("resnet18")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        TimmVision(TIMM_NAME, checkpoint=str(tmp_path / "absent.pth"), **TIMM_KW)


def test_timm_vit_base_on_meta_has_exact_param_count():
    with torch.device("meta"):
        enc = TimmVision(TIMM_NAME)
    width, grid = 768, 14
    expected = (
        3 * 16 * 16 * width
        + width  # patch projection with bias
        + width  # class token
        + (grid * grid + 1) * width
        + 12 * vit_block_params(width, 4 * width)
        + 2 * width  # final norm
    )
    assert all(p.is_meta for p in enc.parameters()) and n_params(enc) == expected


# --- Hugging Face text encoders


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_hf_text_matches_transformers_and_rebuilds_from_spec(tmp_path_factory, name):
    path, ref = hf_dir(tmp_path_factory, name)
    enc = HFTextEncoder(path).eval()
    batch = text_batch()
    with torch.no_grad():
        want = ref(**batch).last_hidden_state
        out = enc(batch)
    assert close(out.hidden_states, want) and torch.equal(out.mask, batch["attention_mask"].bool())
    assert enc.output_dim == 32 and len(enc.blocks()) == 3
    assert not any("pooler" in n for n, _ in enc.named_parameters())

    spec = json.loads(json.dumps(encoder_spec(enc)))
    assert spec["kind"] == "hf_text"
    rebuilt = build_encoder(**spec).eval()
    with torch.no_grad():
        assert not close(rebuilt(batch).hidden_states, want)
        rebuilt.load_state_dict(enc.state_dict())
        assert close(rebuilt(batch).hidden_states, want)


def test_hf_text_loads_half_precision_checkpoint_as_float32(tmp_path):
    model = transformers.AutoModel.from_config(HF_CONFIGS["bert"]()).half()
    model.save_pretrained(tmp_path)
    enc = HFTextEncoder(str(tmp_path))
    assert all(p.dtype == torch.float32 for p in enc.parameters())


def test_hf_text_rejects_causal_models(tmp_path):
    gpt2 = transformers.GPT2Config(vocab_size=99, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    transformers.AutoModel.from_config(gpt2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="bidirectional encoder"):
        HFTextEncoder(str(tmp_path / "gpt2"))
    decoder = HF_CONFIGS["bert"]()
    decoder.is_decoder = True
    transformers.AutoModel.from_config(decoder).save_pretrained(tmp_path / "bert_decoder")
    with pytest.raises(ValueError, match="is_decoder"):
        HFTextEncoder(str(tmp_path / "bert_decoder"))


def test_hf_text_missing_directory_or_config_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        HFTextEncoder(str(tmp_path / "no_such_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFTextEncoder(str(tmp_path / "empty"))


def test_minilm_pretrained_embeds_paraphrases_closer(tmp_path_factory):
    pytest.importorskip("all_minilm_l6_v2")
    cache = tmp_path_factory.mktemp("minilm")
    path = minilm_path(cache)
    assert minilm_path(cache) == path
    enc = HFTextEncoder(str(path)).eval()
    assert enc.output_dim == 384 and len(enc.blocks()) == 6
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = enc({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    weights = out.mask.unsqueeze(-1).float()
    emb = (out.hidden_states * weights).sum(1) / weights.sum(1)
    paraphrase = F.cosine_similarity(emb[0], emb[1], dim=0)
    unrelated = F.cosine_similarity(emb[0], emb[2], dim=0)
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


# --- native text and joint encoders


def test_native_text_24x1024_on_meta_has_formula_param_count():
    vocab, dim, layers, max_len = 32000, 1024, 24, 512
    with torch.device("meta"):
        enc = NativeTextEncoder(vocab, dim, layers, n_heads=16, max_len=max_len)
    expected = vocab * dim + max_len * dim + layers * vit_block_params(dim, 4 * dim) + 2 * dim
    assert all(p.is_meta for p in enc.parameters()) and n_params(enc) == expected
    assert 300e6 < expected < 400e6


@pytest.mark.parametrize("kind", ["native_text", "joint_vl"])
def test_padding_does_not_change_real_outputs(bert_dir, kind):
    enc = _case(kind, bert_dir)[0].eval()
    ids = torch.randint(5, 99, (1, 5), generator=torch.Generator().manual_seed(4))
    padded_ids = torch.cat([ids, torch.tensor([[7, 8, 9]])], dim=1)  # junk ids under padding
    short = {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    long = {"input_ids": padded_ids, "attention_mask": torch.tensor([[1] * 5 + [0] * 3])}
    if kind == "joint_vl":
        short["pixel_values"] = long["pixel_values"] = pixels(1)
    with torch.no_grad():
        a, b = enc(short), enc(long)
    real = a.hidden_states.shape[1]
    assert close(b.hidden_states[:, :real], a.hidden_states)
    assert b.mask.tolist()[0][-3:] == [False] * 3 and bool(b.mask[:, :real].all())


def test_joint_image_tokens_see_the_text(bert_dir):
    enc = _case("joint_vl", bert_dir)[0].eval()
    batch = {"pixel_values": pixels(1), "input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)}
    other = {**batch, "input_ids": torch.tensor([[50, 60, 70]])}
    with torch.no_grad():
        a, b = enc(batch), enc(other)
    n_img = enc.num_image_tokens
    assert n_img == 17 and a.hidden_states.shape == (1, n_img + 3, 32)
    assert not close(a.hidden_states[:, :n_img], b.hidden_states[:, :n_img])


@pytest.mark.parametrize("kind", ["native_text", "joint_vl"])
def test_all_padding_row_stays_finite(bert_dir, kind):
    enc, inputs, _ = _case(kind, bert_dir)
    inputs["attention_mask"] = torch.zeros_like(inputs["attention_mask"])
    assert torch.isfinite(enc(inputs).hidden_states).all()
    with torch.no_grad():  # eval without grad takes torch's fused fast path, which gives NaN for such rows
        assert torch.isfinite(enc.eval()(inputs).hidden_states).all()


# --- every encoder kind


def test_output_shapes_masks_and_every_parameter_used(case):
    kind, enc, inputs, _ = case
    out = enc(inputs)
    n = inputs["input_ids" if "input_ids" in inputs else "pixel_values"].shape[0]
    assert out.hidden_states.shape[0] == n and out.hidden_states.shape[2] == enc.output_dim
    assert out.mask.dtype == torch.bool and out.mask.shape == out.hidden_states.shape[:2]
    if kind in ("open_clip", "timm"):
        assert out.hidden_states.shape[1] == enc.num_tokens and bool(out.mask.all())
    elif kind == "joint_vl":
        n_img = enc.num_image_tokens
        assert bool(out.mask[:, :n_img].all())
        assert torch.equal(out.mask[:, n_img:], inputs["attention_mask"].bool())
    else:
        assert torch.equal(out.mask, inputs["attention_mask"].bool())
    out.hidden_states[out.mask].square().sum().backward()
    unused = [name for name, p in enc.named_parameters() if p.grad is None]
    assert not unused


def test_spec_rebuilds_same_architecture(case):
    kind, enc, inputs, _ = case
    enc.eval()
    spec = json.loads(json.dumps(encoder_spec(enc)))
    assert spec["kind"] == kind
    rebuilt = build_encoder(**spec).eval()
    rebuilt.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert close(rebuilt(inputs).hidden_states, enc(inputs).hidden_states)


def test_freeze_policies(case):
    _, enc, _, last2 = case
    names = [name for name, _ in enc.named_parameters()]

    def trainable() -> set[str]:
        return {name for name, p in enc.named_parameters() if p.requires_grad}

    apply_freeze(enc, "all")
    assert trainable() == set()
    apply_freeze(enc, "all_but_last_2")
    assert trainable() == {name for name in names if name.startswith(last2)}
    assert any(name.startswith(last2[0]) for name in trainable())
    apply_freeze(enc, "none")
    assert trainable() == set(names)
    with pytest.raises(ValueError, match="only 3 blocks"):
        apply_freeze(enc, "all_but_last_4")
    assert trainable() == set(names)  # a rejected policy leaves the encoder as it was
    with pytest.raises(ValueError, match="freeze policy"):
        apply_freeze(enc, "all_but_first_2")


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match="open_clip, timm, hf_text, native_text, joint_vl"):
        build_encoder("resnet")
    with pytest.raises(ValueError, match="not a registered encoder"):
        encoder_spec(Encoder())


def test_every_encoder_declares_what_it_reads():
    reads = {kind: cls.reads for kind, cls in ENCODER_KINDS.items()}
    assert reads == {
        "open_clip": PIXELS,
        "timm": PIXELS,
        "hf_text": OWN_IDS,
        "native_text": DECODER_IDS,
        "joint_vl": IMAGE_TEXT,
    }
    assert set(reads.values()) == set(READS)
