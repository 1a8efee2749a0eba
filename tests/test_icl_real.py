"""In-context learning on real-format files (eval/icl_real.py, eval/icl.py draws) with a tiny random Llama and tiny
synthetic SST-2 / BoolQ files: the pool split and the draws never show a query to itself, k = 0 gives the zero-shot
path's log-probabilities, the shared demonstration prefix scores as a full forward does, and the outputs."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import tiny_llama

from data.tokenizer import Tokenizer
from eval.icl import DRAWS, Demo, draw_demos, prompt_text, sample_demos, split_pool
from eval.lighteval import hf_encoder, tok_encode_pair

WORDS = "good bad fine awful great movie film plot the a was is and very not it passage question yes no".split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved by transformers with a BPE tokenizer beside it (as ``assets/smollm2`` is laid out)."""
    out = tmp_path_factory.mktemp("decoder")
    rng = random.Random(0)
    texts = [_sentence(rng) + "\nQuestion: Is this sentence positive or negative?\nAnswer: positive" for _ in range(30)]
    tok = Tokenizer.train(texts + ["N/A [MASK] True False?"], vocab_size=320)
    tok.save(out)
    tiny_llama(vocab_size=Tokenizer.load(out).vocab_size, max_position_embeddings=512).save_pretrained(out)
    return out


def write_sst2(path, n: int, seed: int = 1):
    rng = random.Random(seed)
    rows = [(_sentence(rng), rng.randint(0, 1)) for _ in range(n)]
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return rows


def write_boolq(path, n: int, seed: int = 2):
    rng = random.Random(seed)
    rows = [
        {"passage": _sentence(rng), "question": _sentence(rng), "idx": i, "label": rng.choice(["true", "false"])}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_split_pool_is_disjoint_and_seeded():
    queries, pool = split_pool(20, 6, seed=3)
    assert len(pool) == 6 and sorted(queries + pool) == list(range(20)) and not set(queries) & set(pool)
    assert queries == sorted(queries)  # the queries keep file order
    assert split_pool(20, 6, seed=3) == (queries, pool) and split_pool(20, 6, seed=4)[1] != pool
    with pytest.raises(ValueError, match="pool_size 20"):
        split_pool(20, 20, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_per_example_draws_never_include_the_query(seed):
    """The pool is the query set itself (the hardest case): each query's demonstrations are k distinct others."""
    pool = [Demo(f"text {i}", " yes", key=i) for i in range(9)]
    keys = list(range(9))
    for trial in range(3):
        drawn = draw_demos(pool, 8, keys, "per_example", seed, trial)  # all but the query: no room to slip
        for key, demos in zip(keys, drawn, strict=True):
            assert sorted(d.key for d in demos) == [k for k in keys if k != key]
        small = draw_demos(pool, 3, keys, "per_example", seed, trial)
        assert all(
            key not in {d.key for d in demos} and len({d.key for d in demos}) == 3
            for key, demos in zip(keys, small, strict=True)
        )
    assert draw_demos(pool, 3, keys, "per_example", seed, 0) == draw_demos(pool, 3, keys, "per_example", seed, 0)


def test_per_trial_draws_share_one_set():
    pool = [Demo(f"text {i}", " no", key=i) for i in range(10)]
    drawn = draw_demos(pool, 4, ["a", "b", "c"], "per_trial", seed=5, trial=2)
    assert drawn[0] == drawn[1] == drawn[2] == sample_demos(pool, 4, random.Random(7))
    assert draw_demos(pool, 0, ["a"], "per_trial", 0, 0) == [[]]
    assert DRAWS == ("per_trial", "per_example")
    with pytest.raises(ValueError, match="draws 'each'"):
        draw_demos(pool, 1, ["a"], "each", 0, 0)
    assert prompt_text(drawn[0][:1], "Q") == f"{drawn[0][0].prompt} no\n\nQ"


def _full_logprob(hf, encode, context: str, continuation: str) -> float:
    ctx, cont = tok_encode_pair(encode, context, continuation)
    with torch.no_grad():
        logp = hf(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_k0_is_the_zero_shot_path(model_dir, tmp_path):
    """BoolQ at k = 0 gives, query for query, the log-probabilities eval/multiple_choice.py --scoring lighteval
    gives (item 1's zero-shot path, no chat template), and its uncalibrated accuracy is that path's ``acc``."""
    from eval.icl_real import main
    from eval.multiple_choice import main as choice_main

    data = tmp_path / "val.jsonl"
    write_boolq(data, 14)
    out = tmp_path / "icl"
    common = ["--checkpoint", str(model_dir), "--device", "cpu", "--batch_size", "4"]
    report = main(
        common
        + [
            "--data",
            f"boolq={data}",
            "--shots",
            "0",
            "--pool_size",
            "4",
            "--restarts",
            "2",
            "--dtype",
            "float32",
            "--out_dir",
            str(out),
        ]
    )["boolq"]
    zero = tmp_path / "zero.json"
    choice_main(common + ["--task", "boolq", "--data", str(data), "--scoring", "lighteval", "--out", str(zero)])
    preds = {p["id"]: p for p in map(json.loads, zero.with_suffix(".predictions.jsonl").read_text().splitlines())}
    ours = report["runs"][0]["logprobs"]
    assert len(ours) == report["n"] == 10
    hits = []
    for key, row in zip(report["query_ids"], ours, strict=True):
        assert row == pytest.approx(preds[key]["logprobs"], abs=2e-4)
        hits.append(int(row[1] > row[0]) == preds[key]["label"])
    assert report["results"][0]["none"]["mean"] == pytest.approx(sum(hits) / len(hits))


def test_shared_prefix_scores_as_a_full_forward(model_dir, tmp_path):
    """SST-2 with per-trial demonstrations: every query's label log-probabilities equal transformers' full logits
    over demonstrations + query; the demonstrations come from the pool, never from the queries; outputs written."""
    from transformers import LlamaForCausalLM

    from data.templates import CLASSIFICATION
    from eval.icl_real import main

    data = tmp_path / "dev.tsv"
    rows = write_sst2(data, 16)
    out = tmp_path / "icl"
    flags = ["--checkpoint", str(model_dir), "--device", "cpu", "--batch_size", "4", "--data", f"sst2={data}"]
    flags += ["--shots", "0,2", "--trials", "2", "--pool_size", "6", "--limit", "sst2=8", "--restarts", "3"]
    report = main(flags + ["--dtype", "float32", "--out_dir", str(out)])["sst2"]
    hf = LlamaForCausalLM.from_pretrained(model_dir).eval()
    encode = hf_encoder(model_dir / "tokenizer.json")
    template = CLASSIFICATION["sst2"]
    prompt = [template.text.format(sentence=s) for s, _ in rows]
    word = [template.verbalizers[y] for _, y in rows]
    for run in report["runs"][1:]:  # the k = 2 trials
        demo_ids = run["demonstrations"]
        assert len(demo_ids) == 2 and not set(demo_ids) & set(report["query_ids"])
        prefix = "".join(prompt[i] + word[i] + "\n\n" for i in _order(report, run))
        key = report["query_ids"][3]
        want = [_full_logprob(hf, encode, prefix + prompt[key], v) for v in template.verbalizers]
        assert run["logprobs"][3] == pytest.approx(want, abs=2e-4)
    entry = report["results"][1]
    assert entry["shots"] == 2 and entry["trials"] == 2 and len(entry["prototypical"]["trials"]) == 2
    assert entry["none"]["mean"] == pytest.approx(sum(entry["none"]["trials"]) / 2)
    assert (out / "icl-sst2.json").is_file() and (out / "icl.png").stat().st_size > 0 and report["complete"]
    assert "| sst2 | 8 (6) | 2 | 2 |" in (out / "icl.md").read_text()
    (out / "icl.md").unlink()
    assert main(["--report", "--out_dir", str(out)]) == {} and "| sst2 | 8 (6) |" in (out / "icl.md").read_text()


def test_per_example_demonstrations_end_to_end(model_dir, tmp_path):
    """``--demos per_example``: each query is scored after its own draw (as ``draw_demos`` gives it), equal to a
    full forward, and contextual calibration reads the content-free inputs under each query's own set."""
    from transformers import LlamaForCausalLM

    from data.templates import CLASSIFICATION
    from eval.icl_real import main

    data = tmp_path / "dev.tsv"
    rows = write_sst2(data, 12)
    flags = ["--checkpoint", str(model_dir), "--device", "cpu", "--batch_size", "8", "--data", f"sst2={data}"]
    flags += ["--shots", "2", "--trials", "1", "--pool_size", "5", "--restarts", "2", "--demos", "per_example"]
    report = main(flags + ["--dtype", "float32", "--out_dir", str(tmp_path / "icl")])["sst2"]
    run = report["runs"][0]
    assert run["demonstrations"] == "per query" and len(run["content_free_logprobs"]) == report["n"] == 7
    template = CLASSIFICATION["sst2"]
    _, pool = split_pool(12, 5, 0)
    demos = [Demo(template.text.format(sentence=rows[i][0]), template.verbalizers[rows[i][1]], i) for i in pool]
    drawn = draw_demos(demos, 2, report["query_ids"], "per_example", 0, 0)
    hf = LlamaForCausalLM.from_pretrained(model_dir).eval()
    encode = hf_encoder(model_dir / "tokenizer.json")
    for q in (0, 6):
        key = report["query_ids"][q]
        context = prompt_text(drawn[q], template.text.format(sentence=rows[key][0]))
        want = [_full_logprob(hf, encode, context, v) for v in template.verbalizers]
        assert run["logprobs"][q] == pytest.approx(want, abs=2e-4)
        cf = prompt_text(drawn[q], template.text.format(sentence="N/A"))
        want_cf = [_full_logprob(hf, encode, cf, v) for v in template.verbalizers]
        assert run["content_free_logprobs"][q][0] == pytest.approx(want_cf, abs=2e-4)


def _order(report: dict, run: dict) -> list[int]:
    """The k demonstrations of a per-trial run in the order shown (the JSON keeps them sorted): redrawn here."""
    from eval.icl import Demo, sample_demos

    _, pool = split_pool(16, report["pool"], report["settings"]["seed"])
    demos = sample_demos([Demo("", "", i) for i in pool], run["shots"], random.Random(run["trial"]))
    return [d.key for d in demos]


def test_bad_flags_are_named(model_dir, tmp_path):
    from eval.icl_real import main

    base = ["--checkpoint", str(model_dir), "--out_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="TASK=PATH"):
        main(base + ["--data", "mnli=x.tsv"])
    with pytest.raises(ValueError, match="--limit names 'rte'"):
        main(base + ["--data", "sst2=x.tsv", "--limit", "rte=5"])
    with pytest.raises(SystemExit):
        main(base + ["--data", "sst2=x.tsv", "--shots", "0,8", "--pool_size", "4"])
