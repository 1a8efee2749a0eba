"""The shared scorer: option log-probabilities and generated answers equal what an unbatched forward gives."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from synthetic import tiny_metalm

from data.pipeline import image_tensor
from data.tokenizer import Tokenizer
from eval.icl import Demo, few_shot_prompt
from eval.runners import FittedPrompts
from eval.scoring import DecodeSettings, EncodedSeg, ImageSeg, Scorer, SpecialSeg, cut_at_stop
from metalm import MetaLM
from metalm.docking import Dock, contiguous_positions, span_dock

TEXTS = [
    "a red circle on the left and a blue square on the right.",
    "Question: what colour is the circle? Answer: red",
    "there are two things: a green triangle and a yellow square.",
    "is there a purple square? yes. is there an orange circle? no.",
] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=300)


def tiny_model(vocab: int, with_text: bool = True, with_vision: bool = True) -> MetaLM:
    return tiny_metalm(vocab, encoders=[e for e, on in (("vision", with_vision), ("text", with_text)) if on])


@pytest.fixture(scope="module")
def scorer(tokenizer) -> Scorer:
    return Scorer(tiny_model(tokenizer.vocab_size), tokenizer, batch_size=3, progress=False)


def image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy())


def reference_logprob(scorer: Scorer, prompt_ids, cont_ids, docks=()) -> float:
    """Unbatched: one full forward of prompt + continuation, log-softmax, sum the continuation's targets."""
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.no_grad():
        logits = scorer.model(ids, list(docks)).logits[0]
    logp = logits.log_softmax(-1)
    start = len(prompt_ids)
    return float(sum(logp[start - 1 + k, t] for k, t in enumerate(cont_ids)))


def test_score_matches_an_unbatched_forward(scorer, tokenizer):
    requests = [
        ("Question: what colour", " is the circle"),
        ("a red", " circle"),
        ("there are two things: a green triangle and", " a yellow square."),
        ("is", " there"),
    ]
    scores = scorer.score(requests)
    for (prompt, cont), got in zip(requests, scores, strict=True):
        p, c = tokenizer.encode(prompt), tokenizer.encode(cont)
        assert got.n_tokens == len(c)
        assert got.logprob == pytest.approx(reference_logprob(scorer, p, c), abs=1e-4)
        assert got.mean == pytest.approx(got.logprob / len(c))


def test_score_with_a_docked_image_matches_a_manual_dock(scorer, tokenizer):
    img = image(1)
    scores = scorer.score([([ImageSeg(img), "a red"], " circle"), (["a red"], " circle")])
    tok, n_vec = tokenizer, scorer.prompts.image_tokens
    prompt = [tok.image_start_id] + [tok.vec_id] * n_vec + [tok.image_end_id] + tok.encode("a red")
    px = image_tensor(img, scorer.prompts.image_size, scorer.prompts.image_mean, scorer.prompts.image_std)[None]
    dock = Dock(
        "vision",
        {"pixel_values": px},
        torch.tensor([0]),
        contiguous_positions(torch.tensor([1]), scorer.prompts.image_tokens),
    )
    want = reference_logprob(scorer, prompt, tok.encode(" circle"), [dock])
    assert scores[0].logprob == pytest.approx(want, abs=1e-4)
    # the image matters: a different image gives a different score
    other = scorer.score([([ImageSeg(image(2)), "a red"], " circle")])[0]
    assert abs(other.logprob - scores[0].logprob) > 1e-6


def test_encoder_read_text_docks_at_its_own_positions(scorer, tokenizer):
    prompt = ["Question:", EncodedSeg(" what colour is the circle?"), " Answer:"]
    got = scorer.score([(prompt, " red")])[0]
    tok = tokenizer
    q, e, a = tok.encode("Question:"), tok.encode(" what colour is the circle?"), tok.encode(" Answer:")
    ids = torch.tensor([q + e + a])
    dock = span_dock(ids, [(0, len(q), len(q) + len(e))], "text", tok.pad_id)
    assert got.logprob == pytest.approx(reference_logprob(scorer, q + e + a, tok.encode(" red"), [dock]), abs=1e-4)
    plain = scorer.score([(["Question: what colour is the circle? Answer:"], " red")])[0]
    assert abs(plain.logprob - got.logprob) > 1e-6


def test_rank_keeps_each_examples_options_together(scorer):
    options = [[("a red", " circle"), ("a red", " square")], [("is", " there"), ("is", " a"), ("is", " no")]]
    ranked = scorer.rank(options)
    flat = scorer.score([o for opts in options for o in opts])
    assert [len(r) for r in ranked] == [2, 3]
    assert [s.logprob for r in ranked for s in r] == pytest.approx([s.logprob for s in flat], abs=1e-5)


def test_is_greedy_marks_the_argmax_continuation(scorer, tokenizer):
    prompt = tokenizer.encode("a red")
    with torch.no_grad():
        order = scorer.model(torch.tensor([prompt])).logits[0, -1].argsort(descending=True).tolist()
    # tokens whose text encodes back to themselves, best first
    round_trip = [t for t in order if tokenizer.encode(tokenizer.decode([t], skip_special=False)) == [t]]
    best, other = round_trip[0], round_trip[1]
    assert best == order[0]  # the argmax itself round-trips on this tokenizer
    got_best = scorer.score([("a red", tokenizer.decode([best]))])[0]
    got_other = scorer.score([("a red", tokenizer.decode([other]))])[0]
    assert got_best.is_greedy and not got_other.is_greedy
    assert got_best.logprob > got_other.logprob


def test_batched_generation_equals_one_at_a_time(scorer, tokenizer):
    prompts = [
        ["a red"],
        [ImageSeg(image(3)), "there are"],
        ["Question: what colour is the circle? Answer:"],
        [ImageSeg(image(4)), ImageSeg(image(5)), "is"],
    ]
    settings = DecodeSettings(max_new_tokens=5, stop=())
    batched = scorer.generate(prompts, settings)
    single = [scorer.generate([p], settings)[0] for p in prompts]
    assert batched == single
    # and a manual greedy loop over full forwards gives the same text for the first prompt
    ids = tokenizer.encode("a red")
    for _ in range(5):
        with torch.no_grad():
            nxt = int(scorer.model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == tokenizer.eos_id:
            break
        ids.append(nxt)
    assert batched[0] == tokenizer.decode(ids[len(tokenizer.encode("a red")) :]).strip()


def test_beam_search_runs_through_the_scorer(scorer):
    out = scorer.generate([["a red"], ["is"]], DecodeSettings(max_new_tokens=4, num_beams=3, stop=()))
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_cut_at_stop():
    assert cut_at_stop(" red circle\nQuestion: x", ("\n",)) == "red circle"
    assert cut_at_stop("yes. no", (".", "\n")) == "yes"
    assert cut_at_stop("  nothing to cut ", ()) == "nothing to cut"


def test_special_segments(scorer, tokenizer):
    enc = scorer.encode(["a", SpecialSeg("</p>"), "b"])
    assert tokenizer.par_id in enc.ids
    with pytest.raises(ValueError, match="unknown special token"):
        scorer.encode([SpecialSeg("<mask>")])


def test_bad_prompts_give_clear_errors(scorer, tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        scorer.encode([ImageSeg(tmp_path / "missing.png")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        scorer.encode([ImageSeg(broken)])
    with pytest.raises(ValueError, match="max_seq_len"):
        scorer.score([("a red circle " * 40, " x")])
    with pytest.raises(ValueError, match="no tokens"):
        scorer.score([("a red", "")])
    text_only = Scorer(tiny_model(tokenizer.vocab_size, with_vision=False), tokenizer, progress=False)
    with pytest.raises(ValueError, match="no vision encoder"):
        text_only.encode([ImageSeg(image(0))])
    no_text = Scorer(tiny_model(tokenizer.vocab_size, with_text=False), tokenizer, progress=False)
    with pytest.raises(ValueError, match="no text encoder"):
        no_text.encode([EncodedSeg("hello")])


def test_from_checkpoint_loads_model_and_tokenizer(scorer, tokenizer, tmp_path):
    scorer.model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    loaded = Scorer.from_checkpoint(tmp_path / "ckpt", progress=False)
    req = [("a red", " circle")]
    assert loaded.score(req)[0].logprob == pytest.approx(scorer.score(req)[0].logprob, abs=1e-5)


def test_few_shot_prompts_drop_the_earliest_demonstrations_to_fit(scorer):
    demos = [Demo(f"a red circle {i} and a blue square on the right.", " yes", i) for i in range(6)]
    fit = FittedPrompts(scorer, "causal", False)
    prompt = fit(demos, "is there a purple square?", reserve=5)
    n = len(scorer.encode(prompt).ids)
    assert n + 5 <= scorer.max_len
    shown = [d for d in demos if f"circle {d.key} " in prompt[0]]
    assert shown and shown == demos[-len(shown) :] and len(shown) < len(demos)  # the latest ones stay
    assert fit(demos[:1], "is", reserve=1) == [demos[0].prompt + demos[0].answer + "\n\nis"]
    stats = fit.stats()
    assert stats["prompts_shortened"] == 1 and stats["mean_demonstrations"] == (len(shown) + 1) / 2
    assert fit.stats()["prompts_shortened"] == 0  # reset


def test_a_measured_few_shot_prompt_is_encoded_once(scorer, monkeypatch):
    demos = [Demo([ImageSeg(image(0)), "shape 0:"], " yes", 0), Demo("shape 1:", " no", 1)]
    fit = FittedPrompts(scorer, "causal", False)
    queries = [[ImageSeg(image(10 + q)), "shape?"] for q in range(2)]
    want = [scorer.score([(few, " yes")])[0].logprob for few in (few_shot(demos, q) for q in queries)]
    calls = []
    real = scorer.prompts.encode
    monkeypatch.setattr(scorer.prompts, "encode", lambda p: calls.append(id(p)) or real(p))
    prompts = [fit(demos, q, reserve=2) for q in queries]
    got = [s.logprob for s in scorer.score([(p, " yes") for p in prompts])]
    assert got == pytest.approx(want, abs=1e-5)
    assert sorted(calls) == sorted(id(p) for p in prompts)  # measured once, not encoded again to be scored
    assert scorer._kept == {}  # nothing held after the call
    scorer.score([(prompts[0], " yes")])
    assert calls.count(id(prompts[0])) == 2  # a later call encodes afresh


def few_shot(demos, query):
    return few_shot_prompt(demos, query, "causal")
