"""analysis.attribution: integrated gradients over attention maps are complete (they sum to F(A) - F(0) within a
Riemann error that shrinks with m), a head that cannot reach the output gets exactly zero, pruning every head of a
layer is that layer's attention output removed, and the study's command writes its results."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.attribution import (
    Item,
    accuracy,
    attention_maps,
    attribute_example,
    attribution_graph,
    completeness_gap,
    head_mask,
    label_probs,
    label_token_ids,
    layer_attribution,
    prune_edit,
    pruning_orders,
)
from metalm import Decoder
from metalm.config import DecoderConfig
from metalm.probes import probe

LABELS = [3, 5, 7]


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=61, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64, positions="rotary")
    cfg.update(norm="rmsnorm", mlp="swiglu", init_std=0.2, attention="sdpa")
    cfg.update(kw)
    return Decoder(DecoderConfig(**cfg)).eval()


def _ids(t=9, seed=3) -> list[int]:
    return torch.randint(8, 61, (t,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("rule", ["right", "left", "midpoint"])
def test_completeness_within_the_riemann_error_which_shrinks_with_m(layer, rule):
    dec, ids = _decoder(), _ids()
    gaps = [
        abs(completeness_gap(dec, ids, layer, 0, LABELS, layer_attribution(dec, ids, layer, 0, LABELS, m, rule)))
        for m in (4, 16, 64)
    ]
    attr = layer_attribution(dec, ids, layer, 0, LABELS, 64, rule)
    change = float(attr.sum()) - completeness_gap(dec, ids, layer, 0, LABELS, attr)
    assert abs(change) > 1e-2  # the layer's attention matters to the output here
    assert gaps[2] < 0.05 * abs(change) + 1e-6
    assert gaps[2] < gaps[1] < gaps[0] or gaps[0] < 1e-5  # midpoint may already be exact to rounding


def test_batched_steps_equal_one_batch_and_the_causal_triangle_gets_nothing():
    dec, ids = _decoder(n_kv_heads=4), _ids()
    whole = layer_attribution(dec, ids, 1, 2, LABELS, m=6)
    parts = layer_attribution(dec, ids, 1, 2, LABELS, m=6, batch=4)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=1e-5)
    assert bool((whole.triu(1) == 0).all())


def test_a_head_that_cannot_reach_the_output_gets_zero_attribution():
    dec, ids = _decoder(), _ids()
    with torch.no_grad():  # layer 1, head 2: its slice of the output projection is zero
        dec.blocks[1].attn.proj.weight[:, 16:24] = 0
    res = attribute_example(dec, ids, LABELS, m=8)
    assert res["attr"].shape == (3, 4, 9, 9)
    assert bool((res["attr"][1, 2] == 0).all())
    assert float(res["attr"][1, [0, 1, 3]].abs().max()) > 1e-5
    assert res["pred"] == int(res["probs"].argmax()) == res["target"]


@pytest.mark.parametrize("mlp, bias", [("swiglu", False), ("gelu", True)])
def test_pruning_every_head_of_a_layer_removes_its_attention_output(mlp, bias):
    dec = _decoder(mlp=mlp, attn_bias=bias, norm="layernorm" if bias else "rmsnorm")
    assert (dec.blocks[1].attn.proj.bias is not None) == bias
    ids = torch.tensor([_ids()])
    keep = torch.ones(3, 4)
    keep[1] = 0
    with torch.no_grad(), probe(dec, record=(), edit_attn=prune_edit(keep)):
        pruned = dec(ids).logits

    def no_attention(module, args, output):  # the sublayer outputs its projection of nothing: the bias, or zero
        out, present = output
        zero = torch.zeros_like(out) if module.proj.bias is None else module.proj.bias.expand_as(out)
        return zero, present

    hook = dec.blocks[1].attn.register_forward_hook(no_attention)
    try:
        with torch.no_grad():
            removed = dec(ids).logits
    finally:
        hook.remove()
    with torch.no_grad():
        plain = dec(ids).logits
    assert (plain - removed).abs().max() > 1e-3
    torch.testing.assert_close(pruned, removed, atol=1e-5, rtol=0)


def test_accuracy_batches_with_left_padding_as_one_at_a_time():
    dec = _decoder()
    items = [Item(_ids(t, seed), seed % 3) for seed, t in enumerate([5, 9, 7, 12, 3])]
    one = []
    for it in items:
        with torch.no_grad():
            one.append(int(label_probs(dec, torch.tensor([it.ids]), LABELS).argmax()) == it.label)
    assert accuracy(dec, items, LABELS, batch_size=3) == pytest.approx(sum(one) / len(one))
    everything = torch.ones(3, 4)
    assert accuracy(dec, items, LABELS, keep=everything) == accuracy(dec, items, LABELS)
    own = [Item(it.ids, it.label % 2, label_ids=[LABELS[1], 11 + i]) for i, it in enumerate(items)]  # per item
    want = []
    for it in own:
        with torch.no_grad():
            want.append(int(label_probs(dec, torch.tensor([it.ids]), it.label_ids).argmax()) == it.label)
    assert accuracy(dec, own, None, batch_size=2) == pytest.approx(sum(want) / len(want))


def test_orders_masks_and_the_graph():
    imp = {"attribution": torch.tensor([[0.3, 0.1], [0.2, 0.4]]), "attention": torch.tensor([[1.0, 0.5], [0.7, 0.9]])}
    orders = pruning_orders(imp, seeds=[0, 1])
    assert orders["attribution"] == [[1, 2, 0, 3]] and orders["attention"] == [[1, 2, 3, 0]]
    assert len(orders["random"]) == 2 and sorted(orders["random"][0]) == [0, 1, 2, 3]
    assert head_mask([1, 2, 0, 3], 2, (2, 2)).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    attr = torch.zeros(2, 2, 3, 3)
    attr[0, 0, 2, 0] = 1.0  # layer 0: key 0 -> query 2 strongest
    attr[0, 1, 1, 0] = 0.3  # below 0.4 of the largest: no edge
    attr[0, 1, 2, 2] = 0.9  # a token to itself: no edge
    attr[1, 0, 1, 0] = -2.0  # layer 1: only negative, nothing kept
    edges = attribution_graph(attr)
    assert edges == [{"layer": 0, "from": 0, "to": 2, "share": 1.0}]


def test_bad_requests_name_what_was_expected():
    dec, ids = _decoder(), _ids()
    with pytest.raises(ValueError, match="steps m=0"):
        layer_attribution(dec, ids, 0, 0, LABELS, m=0)
    with pytest.raises(ValueError, match="rule='trapezoid'"):
        layer_attribution(dec, ids, 0, 0, LABELS, m=2, rule="trapezoid")
    with pytest.raises(ValueError, match="share a first token"):
        label_token_ids(lambda w: [4, len(w)], [" yes", " no"])
    assert len(attention_maps(dec, ids)) == 3


def test_the_command_writes_json_table_and_plots(pretrained, world, tmp_path):
    from analysis.attribute import main

    out = tmp_path / "attr"
    args = ["--checkpoint", str(pretrained), "--data", str(world), "--limit", "6", "--n_importance", "2"]
    result = main(args + ["--steps", "3", "--random_orders", "2", "--out_dir", str(out)])
    saved = json.loads((out / "world-choice.json").read_text())
    assert saved["pruning"]["random"]["runs"] and len(saved["pruning"]["attribution"]["mean"]) == 11
    assert saved["pruning"]["attribution"]["mean"][0] == saved["pruning"]["random"]["mean"][0]  # nothing pruned
    assert (out / "world-choice-pruning.png").stat().st_size > 0 and (out / "world-choice-graph.png").is_file()
    assert "| attribution (1 order) |" in (out / "world-choice.md").read_text()
    assert result["shape"]["layers"] == len(saved["importance"]["attribution"])
    with pytest.raises(SystemExit):
        main(args + ["--steps", "0"])


def test_completeness_by_steps_matches_the_single_layer_gap_and_the_command_writes_it(pretrained, world, tmp_path):
    from analysis.attribute import main
    from analysis.attribution import completeness_by_steps

    dec, ids = _decoder(), _ids()
    item = Item(ids, 1, "text")
    result = completeness_by_steps(dec, item, LABELS, [0, 2], [4, 64], "right", batch=16)
    assert [r["layer"] for r in result["layers"]] == [0, 2] and result["steps"] == [4, 64]
    for row in result["layers"]:
        layer = row["layer"]
        for m in (4, 64):
            attr = layer_attribution(dec, ids, layer, 1, LABELS, m, "right")
            assert row["gaps"][str(m)] == pytest.approx(completeness_gap(dec, ids, layer, 1, LABELS, attr), abs=1e-5)
        assert abs(row["gaps"]["64"]) < abs(row["gaps"]["4"])  # the Riemann error shrinks with m
    with pytest.raises(ValueError, match="layers 0..2"):
        completeness_by_steps(dec, item, LABELS, [3], [4])

    out = tmp_path / "check"
    args = ["--checkpoint", str(pretrained), "--data", str(world), "--limit", "2", "--out_dir", str(out)]
    written = main(args + ["--completeness", "2,8", "--layers", "1", "--name", "c"])
    saved = json.loads((out / "c-completeness.json").read_text())
    assert saved["steps"] == [2, 8] and saved["layers"][0]["layer"] == 1 and written["layers"] == saved["layers"]
    assert "| 1 |" in (out / "c-completeness.md").read_text() and not (out / "c.json").exists()
    with pytest.raises(SystemExit, match="integers"):
        main(args + ["--completeness", "8,x"])
