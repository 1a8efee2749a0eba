"""ELECTRA pretraining (train/electra_pretraining.py): the importance-weighted RTD loss is unbiased, the focal loss
is cross-entropy at gamma 0 and down-weights confident tokens, only masked positions are replaced, the labels mark
exactly the changed ids, a tiny run learns, and the saved encoder docks through a model spec."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoders import NativeTextEncoder
from metalm import MetaLM
from metalm.io import save_safetensors_atomic
from train.electra_pretraining import (
    Discriminator,
    ElectraConfig,
    FinetuneSettings,
    Generator,
    detection_check,
    docked_text_encoder,
    electra_step,
    focal_loss,
    mask_positions,
    replacement_distribution,
    rtd_loss,
    sample_replacements,
)

V = 7


def _expected_rtd(disc, ids, t, q, w):
    """sum over every replacement v at the masked position t of q(v) * the weighted RTD loss there with x'_t = v
    (the importance weight corrects the term of the position it was sampled at)."""
    total = torch.zeros(())
    for v in range(V):
        corrupted = ids.clone()
        corrupted[0, t] = v
        labels = (corrupted != ids).float()
        weights = torch.ones(ids.shape)
        weights[0, t] = w[v]
        at_t = torch.zeros(ids.shape)
        at_t[0, t] = 1
        loss = rtd_loss(disc(corrupted, torch.ones_like(ids, dtype=torch.bool)), labels, weights, at_t)
        total = total + q[v] * loss
    return total


def test_hardness_weighted_rtd_loss_is_unbiased_by_exact_enumeration():
    torch.manual_seed(0)
    disc = Discriminator(NativeTextEncoder(V, 16, 1, 2, max_len=8)).eval()
    ids = torch.tensor([[1, 4, 2, 6, 3]])
    t = 2
    p = torch.softmax(torch.randn(1, V) * 2, -1)
    hardness = torch.tensor([[0.05, 1.7]])  # the original is predicted easy, a replacement hard
    q, w = replacement_distribution(p, ids[0, t : t + 1], hardness)
    plain_q, plain_w = replacement_distribution(p, ids[0, t : t + 1], None)
    assert torch.allclose(q.sum(), torch.tensor(1.0))
    assert not torch.allclose(q, p)  # a different distribution ...
    assert torch.allclose(plain_q, p) and torch.all(plain_w == 1)
    with torch.no_grad():
        hard = _expected_rtd(disc, ids, t, q[0], w[0])
        plain = _expected_rtd(disc, ids, t, p[0], plain_w[0])
    assert torch.allclose(hard, plain, atol=1e-6)  # ... with the same expected loss
    # and without the weights the expectation would differ: the reweighting is what makes it unbiased
    with torch.no_grad():
        unweighted = _expected_rtd(disc, ids, t, q[0], torch.ones(V))
    assert not torch.allclose(unweighted, plain, atol=1e-4)


def test_hardness_proposal_is_generator_times_predicted_loss():
    torch.manual_seed(1)
    p = torch.softmax(torch.randn(3, V), -1)
    originals = torch.tensor([0, 3, 6])
    hardness = torch.rand(3, 2) + 0.1
    q, w = replacement_distribution(p, originals, hardness)
    h = hardness[:, 1:2].repeat(1, V)
    h[torch.arange(3), originals] = hardness[:, 0]
    assert torch.allclose(q, p * h / (p * h).sum(1, keepdim=True))
    assert torch.allclose(q * w, p)
    equal = torch.full((3, 2), 0.7)  # h^orig = h^repl: plain sampling, unit weights
    q_eq, w_eq = replacement_distribution(p, originals, equal)
    assert torch.allclose(q_eq, p) and torch.allclose(w_eq, torch.ones_like(p))


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_confident_tokens():
    torch.manual_seed(2)
    logits = torch.randn(10, V)
    targets = torch.randint(V, (10,))
    assert torch.allclose(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets))
    confident = torch.tensor([[8.0, 0, 0, 0, 0, 0, 0]])
    unsure = torch.tensor([[0.5, 0, 0, 0, 0, 0, 0]])
    target = torch.tensor([0])
    for gamma in (1.0, 2.0):
        ratio_confident = focal_loss(confident, target, gamma) / F.cross_entropy(confident, target)
        ratio_unsure = focal_loss(unsure, target, gamma) / F.cross_entropy(unsure, target)
        assert ratio_confident < ratio_unsure < 1
        assert focal_loss(logits, targets, gamma) < F.cross_entropy(logits, targets)


def test_only_masked_positions_are_replaced_and_labels_mark_exactly_the_changed_ids():
    torch.manual_seed(3)
    ids = torch.randint(V, (6, 12))
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[:, 9:] = False  # padding is never masked
    masked = mask_positions(attention, 0.5)
    assert not (masked & ~attention).any() and masked.any(1).all()
    logits = torch.randn(int(masked.sum()), V)
    logits[::2] = -1e4  # every other masked position: all mass on its original id
    logits[torch.arange(0, len(logits), 2), ids[masked][::2]] = 1e4
    corrupted, labels, weights = sample_replacements(ids, masked, logits, torch.rand(len(logits), 2) + 0.1)
    assert torch.equal(corrupted[~masked], ids[~masked])
    assert torch.equal(labels, (corrupted != ids).float())
    assert torch.all(labels[masked][::2] == 0)  # a sample equal to the original is labelled "original"
    assert labels[masked].sum() > 0 and torch.all(weights[~masked] == 1)


class Saying(torch.nn.Module):
    """A discriminator that calls every position replaced (``always``) or none."""

    def __init__(self, always: bool):
        super().__init__()
        self.logit = 1.0 if always else -1.0

    def forward(self, ids, attention):
        return torch.full(ids.shape, self.logit)


class Oracle(torch.nn.Module):
    """A discriminator that knows the original ids: exactly right everywhere."""

    def __init__(self, originals):
        super().__init__()
        self.originals = originals

    def forward(self, ids, attention):
        return (ids != self.originals).float() * 2 - 1


def test_detection_check_counts_recall_and_false_alarms_per_kind_of_replacement():
    torch.manual_seed(0)
    vocab, length = 50, 24
    ids = torch.randint(vocab, (16, length))
    gen, cfg = Generator(vocab, 16, 1, 2, length), ElectraConfig(mask_prob=0.3)
    yes, no = detection_check(gen, Saying(True), ids, cfg), detection_check(gen, Saying(False), ids, cfg)
    for kind in ("generator", "random"):
        assert (yes[f"{kind}_recall"], yes[f"{kind}_false_alarm"]) == (1.0, 1.0)
        assert (no[f"{kind}_recall"], no[f"{kind}_false_alarm"]) == (0.0, 0.0)
        assert 0.9 < yes[f"{kind}_replaced_share"] <= 1.0  # 50 ids: a sample rarely equals the original
    exact = detection_check(gen, Oracle(ids), ids, cfg)
    assert exact["generator_recall"] == exact["random_recall"] == 1.0
    assert exact["generator_false_alarm"] == exact["random_false_alarm"] == 0.0


@pytest.mark.parametrize("sampling,generator_loss", [("plain", "ce"), ("hardness", "focal")])
def test_a_tiny_run_learns(sampling, generator_loss):
    torch.manual_seed(4)
    vocab, length = 12, 16
    base = torch.arange(length) % 6  # a periodic corpus: easy to model, so losses must fall fast
    data = torch.stack([(base + s) % vocab for s in range(vocab)])
    cfg = ElectraConfig(sampling=sampling, generator_loss=generator_loss, mask_prob=0.25, rtd_weight=5.0)
    gen = Generator(vocab, 16, 1, 2, length)
    disc = Discriminator(NativeTextEncoder(vocab, 32, 1, 2, length))
    opt = torch.optim.AdamW([*gen.parameters(), *disc.parameters()], lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        ids = data[torch.randint(len(data), (8,), generator=rng)]
        loss, parts = electra_step(gen, disc, ids, torch.ones_like(ids, dtype=torch.bool), cfg, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["mlm"] + cfg.rtd_weight * parts["rtd"])
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_the_electra_encoder_docks_through_the_spec_frozen_but_its_last_layers(tmp_path):
    args = dict(vocab_size=64, dim=16, n_layers=3, n_heads=2, max_len=32)
    torch.manual_seed(5)
    encoder = NativeTextEncoder(**args)
    save_safetensors_atomic(encoder.state_dict(), tmp_path / "encoder.safetensors")
    spec = {
        "decoder": dict(vocab_size=64, dim=16, n_layers=1, n_heads=2, max_seq_len=32),
        "encoders": {"text": docked_text_encoder(tmp_path / "encoder.safetensors", args, "all_but_last_2")},
    }
    model, _ = MetaLM.from_spec(spec)
    docked = model.encoders["text"]
    for name, value in encoder.state_dict().items():
        assert torch.equal(docked.state_dict()[name], value), name
    trainable = [any(p.requires_grad for p in b.parameters()) for b in docked.blocks()]
    assert trainable == [False, True, True]
    assert not docked.token_embedding.weight.requires_grad and docked.norm.weight.requires_grad
    wrong = {
        **spec,
        "encoders": {"text": docked_text_encoder(tmp_path / "encoder.safetensors", {**args, "dim": 8}, "none")},
    }
    with pytest.raises(ValueError, match="encoder.safetensors does not fit"):
        MetaLM.from_spec(wrong)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="sampling = 'hard'"):
        ElectraConfig(sampling="hard").check()
    with pytest.raises(ValueError, match="generator_loss"):
        ElectraConfig(generator_loss="mse").check()
    with pytest.raises(ValueError, match="seq_len = 300"):
        ElectraConfig(seq_len=300).check()


def _text_file(path, paragraphs=True):
    """A small English-like text: paragraphs separated by blank lines (or one sentence a line)."""
    names, things = ["anna", "ben", "cara", "dan"], ["apple", "book", "cup", "drum"]
    lines = [f"{names[i % 4]} gave {names[(i + 1) % 4]} the {things[i % 4]} and {names[(i + 1) % 4]} kept it ."
             for i in range(60)]  # fmt: skip
    path.write_text(("\n\n" if paragraphs else "\n").join(lines) + "\n")
    return path


def test_text_documents_and_the_held_out_split(tmp_path):
    from train.electra_pretraining import corpus, text_documents

    para = text_documents(_text_file(tmp_path / "para.txt"))
    lines = text_documents(_text_file(tmp_path / "lines.txt", paragraphs=False))
    assert para == lines and len(para) == 60 and para[0] == "anna gave ben the apple and ben kept it ."
    two = tmp_path / "two.txt"
    two.write_text("first line\nsecond line\n\nand a paragraph\nof two lines\n\n" * 12)  # paragraphs: 24 of them
    assert text_documents(two)[:2] == ["first line second line", "and a paragraph of two lines"]
    cfg = ElectraConfig(text=str(tmp_path / "lines.txt"), vocab_size=300, seq_len=8, max_len=8)
    tokenizer, train, held_out = corpus(cfg)
    stream = []
    for ids in tokenizer.encode_batch(lines[-3:]):  # 5% of 60 documents, held out
        stream += ids + [tokenizer.eos_id]
    assert held_out.flatten().tolist() == stream[: held_out.numel()]
    assert train.numel() + held_out.numel() > 0.9 * len(tokenizer.encode(" ".join(lines)))
    from train.electra_pretraining import unigram_entropy

    assert unigram_entropy(torch.arange(8).repeat(3, 1)) == pytest.approx(math.log(8))
    assert unigram_entropy(torch.tensor([[5, 5, 5, 5]])) == 0
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        text_documents(tmp_path / "nothing.txt")
    (tmp_path / "short.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="short.txt: 2 non-empty documents"):
        text_documents(tmp_path / "short.txt")


def test_a_comparison_on_a_text_file_with_a_glue_task_downstream(tmp_path):
    """``--text`` with ``--tasks sst2``: the runs pretrain on the file with its own tokenizer (saved), finetune
    on the tsv task, report held-out detection; such an encoder is refused for docking into the world's model."""
    import json

    from train.electra_pretraining import run_comparison, run_dock_comparison

    text = _text_file(tmp_path / "corpus.txt")
    for split, n in (("train", 24), ("val", 12)):
        rows = ["sentence\tlabel"] + [
            f"{'a fine film' if i % 2 else 'a dull film'} number {i}\t{i % 2}" for i in range(n)
        ]
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    from train.electra_pretraining import corpus_tokenizer, file_task

    base = ElectraConfig(text=str(text), vocab_size=300, steps=4, batch_size=4, seq_len=16, max_len=32, dim=16)
    tok = corpus_tokenizer(base)
    rows = file_task("sst2", str(tmp_path / "val.tsv"), tok, 32, 0)
    assert [label for _, label in rows] == [i % 2 for i in range(12)]  # the tsv's labels, as indices
    assert rows[3][0] == [tok.encode("a fine film number 3")]
    base.n_heads, base.gen_dim = 2, 16
    ft = FinetuneSettings(batch_size=4, task_train=str(tmp_path / "train.tsv"), task_val=str(tmp_path / "val.tsv"))
    out = tmp_path / "out"
    result = run_comparison(base, ["electra", "scratch"], [0], 3, tmp_path / "runs", out, tasks=["sst2"], finetune=ft)
    runs = {r["variant"]: r for r in result["comparison"]["runs"]}
    assert runs["electra"]["sst2"]["n_val"] == runs["scratch"]["sst2"]["n_val"] == 12
    assert set(runs["electra"]["held_out_detection"]) >= {"generator_recall", "random_recall"}
    run = tmp_path / "runs" / "runs" / "electra-seed0"
    assert json.loads((run / "encoder.json").read_text())["text"] == str(text)
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    table = (out / "electra.md").read_text()
    assert "| sst2 acc |" in table and "corpus.txt" in table
    with pytest.raises(ValueError, match="its own tokenizer"):
        run_dock_comparison(run / "encoder.safetensors", "data/world", 1, [0], tmp_path / "dock", tmp_path / "d")
    with pytest.raises(ValueError, match="--task_train"):
        run_comparison(base, ["scratch"], [0], 1, tmp_path / "runs2", out, tasks=["sst2"])
