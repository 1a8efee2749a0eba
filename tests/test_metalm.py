"""MetaLM: docking, the semi-causal no-leak invariant, save/load, presets and bad input."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import tiny_config

from metalm import ConnectorConfig, DecoderConfig, MetaLM, MetaLMConfig
from metalm.docking import Dock, contiguous_positions, span_dock
from metalm.presets import get_preset
from metalm.semicausal import IGNORE_INDEX, sample_spans, scaled_span_lengths

VOCAB, IMG_TOKENS = 53, 17  # 16 patches + class token


def small_config(connector: str = "mlp", positions: str = "rotary") -> MetaLMConfig:
    vision_connector = ConnectorConfig(connector, layers=3, queries=5, heads=2, depth=1)
    return tiny_config(
        VOCAB,
        encoders=("text", "vision"),
        img_size=16,
        enc_dim=24,
        enc_layers=2,
        vision_connector=vision_connector,
        positions=positions,
    )


@pytest.fixture(scope="module")
def model() -> MetaLM:
    torch.manual_seed(0)
    return MetaLM(small_config()).eval()


def image_dock(n_images: int, start: int, length: int = IMG_TOKENS, seed: int = 0) -> Dock:
    g = torch.Generator().manual_seed(seed)
    return Dock(
        "vision",
        {"pixel_values": torch.randn(n_images, 3, 16, 16, generator=g)},
        torch.arange(n_images),
        contiguous_positions(torch.full((n_images,), start), length),
    )


def random_ids(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def docks_for(ids: torch.Tensor, spans: list[tuple[int, int]], image_at: int | None) -> list[Dock]:
    docks = [span_dock(ids, [(0, s, e) for s, e in spans], "text")] if spans else []
    if image_at is not None:
        docks.append(image_dock(1, image_at))
    return docks


def check_no_leak(model: MetaLM, ids: torch.Tensor, spans, image_at) -> int:
    """For every loss-counted target x_t, replacing x_t in the input leaves the logits predicting it unchanged."""
    with torch.no_grad():
        out = model(ids, docks_for(ids, spans, image_at), labels=ids, return_logits=True)
        counted = (out.labels[0, 1:] != IGNORE_INDEX).nonzero()[:, 0] + 1
        for t in counted.tolist():
            changed = ids.clone()
            changed[0, t] = (changed[0, t] + 1 + t) % VOCAB
            logits = model(changed, docks_for(changed, spans, image_at)).logits
            torch.testing.assert_close(logits[0, t - 1], out.logits[0, t - 1], atol=1e-5, rtol=0)
    return len(counted)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), with_image=st.booleans())
def test_no_leak_invariant_over_random_span_layouts(model, seed, with_image):
    rng = random.Random(seed)
    t = 40
    ids = random_ids(1, t, seed)
    image_at = rng.randint(1, 4) if with_image else None
    text_from = image_at + IMG_TOKENS + 1 if with_image else 0
    spans = sample_spans([(text_from, t)], rng, ratio=0.3, min_len=2, max_len=6)
    counted = check_no_leak(model, ids, spans, image_at)
    docked = {p for s, e in spans for p in range(s, e)}
    if with_image:
        docked |= set(range(image_at, image_at + IMG_TOKENS))
    assert counted == len(set(range(1, t)) - docked)  # every other target is trained


def test_the_invariant_catches_a_span_leak(model):
    """Counting a target inside a span (as Kosmos-2's code does with a span's last token) breaks the invariant."""
    ids = random_ids(1, 20, 3)
    s, e = 5, 11
    docks = docks_for(ids, [(s, e)], None)
    changed = ids.clone()
    changed[0, e - 1] += 1
    with torch.no_grad():
        a = model(ids, docks).logits[0, e - 2]
        b = model(changed, docks_for(changed, [(s, e)], None)).logits[0, e - 2]
    assert (a - b).abs().max() > 1e-3  # so the model must never count x_{e-1} as a target
    labels = model(ids, docks, labels=ids).labels
    assert (labels[0, s:e] == IGNORE_INDEX).all()


def test_token_after_a_span_is_trained_from_the_spans_last_position(model):
    ids = random_ids(1, 20, 4)
    s, e = 6, 12
    docks = docks_for(ids, [(s, e)], None)
    out = model(ids, docks, labels=ids, return_logits=True)
    assert out.labels[0, e] == ids[0, e]
    assert (out.labels[0, s:e] == IGNORE_INDEX).all()
    assert out.n_targets == 19 - (e - s)
    # the loss's gradient reaches the logits at the span's last position through that target alone
    logits = out.logits.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], out.labels[0, 1:], ignore_index=IGNORE_INDEX)
    loss.backward()
    grad_rows = logits.grad[0].abs().sum(-1) > 0
    assert grad_rows[e - 1] and not grad_rows[s : e - 1].any()


def test_docked_vectors_replace_embeddings_and_keep_positions(model):
    ids = random_ids(2, 30, 5)
    dock = image_dock(2, 3)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, [dock])
        plain = model.decoder.embed(ids)
        out = model.encoders["vision"](dock.inputs)
        vectors, _ = model.connectors["vision"](out.hidden_states, out.mask)
    torch.testing.assert_close(embeds[:, 3 : 3 + IMG_TOKENS], vectors)
    torch.testing.assert_close(embeds[:, 3 + IMG_TOKENS :], plain[:, 3 + IMG_TOKENS :])
    torch.testing.assert_close(embeds[:, :3], plain[:, :3])
    # placeholder token ids under a docked image do not matter
    other = ids.clone()
    other[:, 3 : 3 + IMG_TOKENS] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(other, [dock]).logits, model(ids, [dock]).logits)


def test_same_image_at_another_offset_sees_other_positions(model):
    """Docked positions keep the decoder's positional encoding, so moving an image changes what the model sees."""
    ids = random_ids(1, 30, 6)
    with torch.no_grad():
        a = model(ids, [image_dock(1, 2)]).logits[0, 2 + IMG_TOKENS - 1]
        b = model(ids, [image_dock(1, 6)]).logits[0, 6 + IMG_TOKENS - 1]
    assert (a - b).abs().max() > 1e-4


def test_resampler_connector_docks_fewer_vectors():
    torch.manual_seed(0)
    m = MetaLM(small_config(connector="resampler")).eval()
    ids = random_ids(1, 20, 7)
    with torch.no_grad():
        out = m(ids, [image_dock(1, 2, length=5)], labels=ids)
    assert out.n_targets == 19 - 5
    with pytest.raises(ValueError, match="gave 5 vectors for segment 0 but the dock has 17"):
        m(ids, [image_dock(1, 2)])


def test_more_image_vectors_than_placeholders_is_a_clear_error(model):
    with pytest.raises(ValueError, match="gave 17 vectors for segment 0 but the dock has 16 placeholder positions"):
        model(random_ids(1, 30), [image_dock(1, 2, length=16)])


def test_bad_docks_are_named(model):
    ids = random_ids(1, 30)
    with pytest.raises(ValueError, match="encoder 'audio'"):
        model(ids, [Dock("audio", {}, torch.tensor([0]), torch.tensor([[1]]))])
    with pytest.raises(ValueError, match="positions outside"):
        model(ids, [image_dock(1, 20)])
    with pytest.raises(ValueError, match="same decoder position"):
        model(ids, [image_dock(1, 2), span_dock(ids, [(0, 10, 14)], "text")])
    with pytest.raises(ValueError, match="labels have shape"):
        model(ids, labels=ids[:, :5])


def test_save_and_load_round_trip_is_exact(model, tmp_path):
    ids = random_ids(2, 30, 8)
    docks = [image_dock(2, 1), span_dock(ids, [(0, 20, 25), (1, 22, 24)], "text")]
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MetaLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.portable_config() == model.portable_config()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(loaded(ids, docks).logits, model(ids, docks).logits)
    # saving again over the same directory replaces it whole
    model.save_pretrained(tmp_path / "ckpt")
    assert not list(tmp_path.glob(".ckpt*"))


def test_freeze_policy_from_config_survives_loading(tmp_path):
    cfg = small_config()
    cfg.encoders["text"].freeze = "all_but_last_1"
    cfg.encoders["vision"].freeze = "all"
    m = MetaLM(cfg)
    m.save_pretrained(tmp_path)
    loaded = MetaLM.from_pretrained(tmp_path)
    for mm in (m, loaded):
        assert not any(p.requires_grad for p in mm.encoders["vision"].parameters())
        text_trainable = [p.requires_grad for p in mm.encoders["text"].parameters()]
        assert any(text_trainable) and not all(text_trainable)
        assert all(p.requires_grad for p in mm.decoder.parameters())


def test_generate_with_a_docked_image(model):
    ids = random_ids(1, 22, 9)
    dock = image_dock(1, 2)
    out = model.generate(ids, [dock], max_new_tokens=5)
    assert out.shape == (1, 27)
    # the first generated token is the argmax after the docked prompt
    with torch.no_grad():
        assert out[0, 22] == model(ids, [dock]).logits[0, -1].argmax()


def test_bad_checkpoint_directories_are_named(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        MetaLM.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        MetaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        MetaLM.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        MetaLM.from_pretrained(tmp_path / "ok")
    model.save_pretrained(tmp_path / "ok")
    cfg["decoder"]["dim"] = 64
    cfg["decoder"]["head_dim"] = 16
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape .* the config expects"):
        MetaLM.from_pretrained(tmp_path / "ok")
    cfg["decoder"]["bogus"] = 1
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a MetaLM config"):
        MetaLM.from_pretrained(tmp_path / "ok")


def test_unknown_preset_and_encoder_kind():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        get_preset("huge")
    cfg = small_config()
    cfg.encoders["text"].kind = "whisper"
    with pytest.raises(ValueError, match="whisper"):
        MetaLM(cfg)


def decoder_param_formula(c: DecoderConfig) -> int:
    d = c.dim
    norms, attn = 2 * 2 * d, (3 * d * d + 3 * d) + (d * d + d)
    per_layer = norms + attn + (d * c.mlp_hidden + c.mlp_hidden) + (c.mlp_hidden * d + d)
    return c.vocab_size * d + c.n_layers * per_layer + 2 * d


def test_paper_presets_build_on_meta_with_expected_sizes():
    with torch.device("meta"):
        xl = MetaLM(get_preset("language-xl"))
        vl = MetaLM(get_preset("vl-medium"))
    assert all(p.is_meta for p in xl.parameters())
    assert xl.decoder.num_params() == decoder_param_formula(xl.config.decoder)
    assert 1.3e9 < xl.decoder.num_params() < 1.4e9  # the paper's 1.3B-class decoder
    assert (xl.decoder.cfg.n_layers, xl.decoder.cfg.dim, xl.decoder.cfg.n_heads) == (24, 2048, 32)
    text = xl.encoders["text"]
    assert len(text.blocks()) == 24 and text.output_dim == 1024
    assert vl.decoder.num_params() == decoder_param_formula(vl.config.decoder)
    assert (vl.decoder.cfg.n_layers, vl.decoder.cfg.dim, vl.decoder.cfg.n_heads) == (24, 1024, 16)
    assert 85e6 < sum(p.numel() for p in vl.encoders["vision"].parameters()) < 88e6  # ViT-B/16
    mlp = [m for m in vl.connectors["vision"].modules() if isinstance(m, torch.nn.Linear)]
    assert len(mlp) == 3
    trainable_text = sum(p.numel() for p in text.parameters() if p.requires_grad)
    assert 0 < trainable_text < 0.15 * sum(p.numel() for p in text.parameters())  # last two of 24 layers


def test_tiny_preset_trains_a_step():
    torch.manual_seed(0)
    m = MetaLM.from_preset("tiny", vocab_size=300)
    assert m.encoders["text"].blocks()  # text encoder shares the decoder's vocabulary
    ids = torch.randint(0, 300, (2, 64))
    docks = [
        Dock(
            "vision",
            {"pixel_values": torch.randn(2, 3, 32, 32)},
            torch.arange(2),
            contiguous_positions(torch.tensor([1, 1]), 17),
        ),
        span_dock(ids, [(0, 30, 38)], "text"),
    ]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = m(ids, docks, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in m.connectors.parameters())


def test_span_length_scaling():
    assert scaled_span_lengths(2048) == (64, 128)
    assert scaled_span_lengths(256) == (8, 16)
    assert scaled_span_lengths(16) == (2, 2)


def test_sample_spans_stay_inside_documents_and_near_the_ratio():
    rng = random.Random(0)
    docs = [(0, 300), (300, 310), (310, 1000)]
    for _ in range(20):
        spans = sample_spans(docs, rng, ratio=0.25, min_len=8, max_len=16)
        covered = sum(e - s for s, e in spans)
        assert 0.15 * 1000 <= covered <= 0.25 * 1000 + 16
        for s, e in spans:
            assert any(ds <= s and e < de for ds, de in docs)  # inside one document, last token left causal
        for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False):
            assert e1 < s2  # at least one causal token between spans


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "config.json: not UTF-8"),
        (b"[1, 2]", "config.json: a JSON list; expected an object"),
        (b'{"model_type": "metalm", "decoder": [4, 256]}', "config.json: decoder is \\[4, 256\\]; expected an object"),
        (b'{"model_type": "metalm", "decoder": {"dim": "256"}}', "config.json: decoder.dim is '256'; expected an"),
        (b'{"model_type": "metalm", "decoder": {"vocab_size": true}}', "config.json: decoder.vocab_size is True"),
        (b'{"model_type": "metalm", "decoder": {"n_kv_heads": 1.5}}', "decoder.n_kv_heads is 1.5; expected an integer"),
        (b'{"model_type": "metalm", "decoder": {}, "encoders": []}', "config.json: encoders is \\[\\]; expected an"),
        (b'{"model_type": "metalm", "decoder": {}, "encoders": {"v": {"kind": 3}}}', "encoders.v.kind is 3"),
        (
            b'{"model_type": "metalm", "decoder": {}, "encoders": {"v": {"kind": "x", "connector": {"layers": "2"}}}}',
            "config.json: encoders.v.connector.layers is '2'",
        ),
        (b'{"model_type": "metalm", "decoder": {"dim": 10, "n_heads": 3}}', "config.json: not a MetaLM config"),
    ],
)
def test_every_malformed_config_names_its_file(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        MetaLM.from_pretrained(tmp_path)


def test_a_config_of_impossible_sizes_names_its_file(model, tmp_path):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["decoder"]["dim"] = -4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: the config does not build a model .*negative dimension"):
        MetaLM.from_pretrained(tmp_path)
