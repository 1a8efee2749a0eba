"""analysis.knowledge_neurons: integrated gradients are complete (the attributions sum to F(x) - F(0) within a
Riemann error that shrinks with m), a planted neuron that alone drives an answer is found, erasing it removes the
answer while random neurons do not, edits touch only the edited value rows, and the command writes its report."""

from __future__ import annotations

import json
import random

import pytest
import torch

from analysis.knowledge_neurons import (
    Fact,
    answer_probs,
    edited_rows,
    erase_rows,
    exclusive,
    fact_neurons,
    integrated_gradients,
    load_facts,
    prompt_neurons,
    random_neurons,
    refine,
    update_rows,
    world_facts,
)
from metalm import Decoder
from metalm.config import DecoderConfig

VOCAB, TARGET, OTHER, PLANTED = 61, 17, 23, (1, 7)


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, max_seq_len=64, init_std=0.2, tie_embeddings=False)
    cfg.update(kw)
    return Decoder(DecoderConfig(**cfg)).eval()


def _prompts(n=5, length=8, seed=1, last=5) -> list[list[int]]:
    """Random prompts of one length that all end on token ``last`` (as a fact's paraphrases end alike)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(6, VOCAB, (length - 1,), generator=g).tolist() + [last] for _ in range(n)]


@pytest.mark.parametrize(
    "kw", [dict(mlp="gelu", norm="layernorm", positions="learned"), dict(mlp="swiglu", norm="rmsnorm", n_kv_heads=2)]
)
def test_attributions_sum_to_the_change_of_the_probability(kw):
    """Completeness per layer: sum_i Attr_i = F(actual) - F(0), up to an O(1/m) Riemann error; F(actual) and F(0)
    are what a plain forward gives (the cached prefix changes nothing), and batching changes nothing."""
    dec = _decoder(**kw)
    ids = _prompts(1)[0]
    gaps = {}
    for m in (4, 16, 64):
        a = integrated_gradients(dec, ids, TARGET, steps=m)
        change = a.prob - a.zero_prob
        gaps[m] = float((a.scores.sum(1) - change).abs().max())
    assert float(change.abs().max()) > 1e-3  # the layers matter to F, so the test has teeth
    assert gaps[64] < gaps[16] < gaps[4]
    assert gaps[64] < 0.05 * float(change.abs().max())
    with torch.no_grad():
        plain = dec(torch.tensor([ids])).logits[0, -1].softmax(-1)[TARGET].item()
    assert a.prob == pytest.approx(plain, abs=1e-6)
    silenced = {(1, i): 0.0 for i in range(dec.blocks[1].mlp.proj.weight.shape[1])}
    assert float(a.zero_prob[1]) == pytest.approx(float(answer_probs(dec, [ids], TARGET, silenced)[0]), abs=1e-6)
    small = integrated_gradients(dec, ids, TARGET, steps=64, batch_size=5)
    torch.testing.assert_close(small.scores, a.scores, atol=1e-6, rtol=1e-4)


def _plant(dec: Decoder, prompts: list[list[int]]) -> None:
    """Make neuron PLANTED fire on the prompts' last position and write the TARGET token's output embedding."""
    layer, index = PLANTED
    block = dec.blocks[layer]
    with torch.no_grad():
        states = []
        for ids in prompts:
            seen = []
            hook = block.mlp.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0][0, -1]))
            dec(torch.tensor([ids]))
            hook.remove()
            states.append(seen[0] / seen[0].norm())
        direction = torch.stack(states).mean(0)
        block.mlp.fc.weight[index] = 3.0 * direction / direction.norm() ** 2
        block.mlp.fc.bias[index] = 0.0
        unembed = dec.lm_head.weight[TARGET] - dec.lm_head.weight.mean(0)
        block.mlp.proj.weight[:, index] = 4.0 * unembed / unembed.norm()


def test_a_planted_neuron_is_found_and_erasing_it_removes_the_answer():
    dec = _decoder(mlp="gelu", norm="layernorm", positions="learned")
    prompts = _prompts()
    before = answer_probs(dec, prompts, TARGET)
    _plant(dec, prompts)
    probs = answer_probs(dec, prompts, TARGET)
    assert float(before.max()) < 0.1 and float(probs.min()) > 0.5  # the neuron alone drives the answer
    attributions = [integrated_gradients(dec, ids, TARGET, steps=20) for ids in prompts]
    for a in attributions:  # the top attribution of every prompt
        assert divmod(int(a.scores.argmax()), a.scores.shape[1]) == PLANTED
    found = fact_neurons([prompt_neurons(a.scores) for a in attributions])
    assert PLANTED in found
    with edited_rows(dec, erase_rows(dec, found)):
        erased = answer_probs(dec, prompts, TARGET)
    rng = random.Random(0)
    randoms = []
    for _ in range(5):
        with edited_rows(dec, erase_rows(dec, random_neurons(found, dec.cfg.mlp_hidden, rng))):
            randoms.append(answer_probs(dec, prompts, TARGET))
    drop = float((probs - erased).mean() / probs.mean())
    random_drop = max(abs(float((probs - r).mean() / probs.mean())) for r in randoms)
    assert drop > 0.8 and random_drop < 0.1
    suppressed = answer_probs(dec, prompts, TARGET, dict.fromkeys(found, 0.0))
    amplified = answer_probs(dec, prompts, TARGET, dict.fromkeys(found, 2.0))
    assert float(suppressed.mean()) < 0.2 * float(probs.mean()) and bool((amplified > probs).all())
    # updating the neuron from TARGET to OTHER: OTHER becomes the answer
    with edited_rows(dec, update_rows(dec, found, TARGET, OTHER)):
        logits_top = [int(dec(torch.tensor([ids])).logits[0, -1].argmax()) for ids in prompts]
    assert logits_top == [OTHER] * len(prompts)


def test_edits_touch_only_the_edited_value_rows_and_are_undone_exactly():
    dec = _decoder(mlp="swiglu", norm="rmsnorm")
    original = {k: v.clone() for k, v in dec.state_dict().items()}
    neurons = [(0, 3), (2, 5), (2, 40)]
    for rows in (erase_rows(dec, neurons), update_rows(dec, neurons, TARGET, OTHER)):
        with edited_rows(dec, rows):
            for name, value in dec.state_dict().items():
                layer = next((i for i in range(3) if name == f"blocks.{i}.mlp.proj.weight"), None)
                if layer is None:
                    assert torch.equal(value, original[name]), name
                    continue
                edited = [i for (at, i) in neurons if at == layer]
                keep = [i for i in range(value.shape[1]) if i not in edited]
                assert torch.equal(value[:, keep], original[name][:, keep])
                for i in edited:
                    assert torch.equal(value[:, i], rows[(layer, i)])
                    assert not torch.equal(value[:, i], original[name][:, i])
        for name, value in dec.state_dict().items():
            assert torch.equal(value, original[name]), name
    v = original["blocks.2.mlp.proj.weight"][:, 5]
    row = update_rows(dec, [(2, 5)], TARGET, OTHER)[(2, 5)]
    e_old, e_new = dec.lm_head.weight[TARGET].detach(), dec.lm_head.weight[OTHER].detach()
    torch.testing.assert_close(row, v - v.norm() * e_old / e_old.norm() + v.norm() * e_new / e_new.norm())


def test_refining_keeps_neurons_shared_by_most_prompts():
    scores = torch.zeros(5, 2, 10)  # five prompts
    scores[:, 1, 3] = 1.0  # top of every prompt
    scores[:4, 0, 2] = 0.3  # above 0.2 x max in four prompts of five
    scores[:2, 0, 5] = 0.5  # in two prompts only
    scores[:, 1, 8] = 0.1  # below the share everywhere
    per_prompt = [prompt_neurons(s) for s in scores]
    assert per_prompt[0] == {(1, 3), (0, 2), (0, 5)} and per_prompt[4] == {(1, 3)}
    assert fact_neurons(per_prompt, 0.7) == [(0, 2), (1, 3)]
    assert fact_neurons(per_prompt, 0.9) == [(1, 3)]
    assert prompt_neurons(-scores) == set()  # no positive attribution, no neuron

    class A:  # an attribution stand-in: refine reads .scores only
        def __init__(self, s):
            self.scores = s

    found, p = refine([[A(s) for s in scores]], prompt_share=0.7, target=(1, 1))
    assert found == [[(1, 3)]] and p == pytest.approx(0.85)  # moved up by 0.05 until one neuron is left
    assert exclusive([[(1, 3), (0, 2)], [(1, 3)], [(0, 9)]], 0) == [(0, 2)]
    rng = random.Random(0)
    drawn = random_neurons([(0, 2), (1, 3), (1, 4)], 10, rng)
    assert sorted(layer for layer, _ in drawn) == [0, 1, 1] and not {(0, 2), (1, 3), (1, 4)} & set(drawn)


def test_world_facts_are_stated_by_the_world_and_bad_fact_files_are_named(tmp_path):
    from data.world import FACTS

    facts = world_facts(n_prompts=4)
    assert len(facts) == 10 and all(len(f.prompts) == 4 for f in facts)
    for f in facts:
        stem = f.prompts[0]
        assert any(s == stem + f.answer + s[len(stem + f.answer) :] and s.startswith(stem + f.answer) for s in FACTS)
        assert all(p.endswith(stem) for p in f.prompts) and len(set(f.prompts)) == 4
    good = tmp_path / "facts.json"
    good.write_text(json.dumps([{"name": "France", "prompts": ["The capital of France is"], "answer": " Paris"}]))
    assert load_facts(good) == [Fact("France", ("The capital of France is",), " Paris")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "prompts": [], "answer": " y"}]))
    with pytest.raises(ValueError, match="bad.json: entry 0"):
        load_facts(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_facts(tmp_path / "missing.json")


def test_the_command_writes_json_markdown_and_plot(pretrained, tmp_path):
    from analysis.find_neurons import main

    out = tmp_path / "out"
    result = main(
        ["--checkpoint", str(pretrained), "--facts", "world", "--prompts", "2", "--steps", "2", "--random_draws", "1"]
        + ["--out_dir", str(out)]
    )
    assert {p.name for p in out.iterdir()} == {"world.json", "world.md", "world.png"}
    saved = json.loads((out / "world.json").read_text())
    assert saved["summary"]["facts"] == 10 and len(saved["facts"]) == 10
    assert saved["settings"]["steps"] == 2 and result["command"].startswith("python analysis/find_neurons.py")
    assert "| suppress (activation x0) |" in (out / "world.md").read_text()
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(pretrained), "--steps", "0"])
