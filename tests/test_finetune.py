"""train/finetune.py: answer-only labels, deterministic batches, freeze policies, and a run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.batching import ExampleBatcher
from data.prompts import PromptEncoder
from data.tokenizer import Tokenizer
from metalm import MetaLM
from metalm.docking import docked_mask
from metalm.loss import IGNORE_INDEX
from train.finetuning import FinetuneConfig, parse_finetune_config, read_examples
from train.tuning import configure_freeze

ROOT = Path(__file__).resolve().parents[1]


def cfg(world, pretrained, *extra) -> FinetuneConfig:
    return parse_finetune_config(["--init_from", str(pretrained), "--world", str(world), "--batch_size", "4", *extra])


@pytest.mark.parametrize("task", ["world-vqa", "world-entail", "world-captions", "world-choice"])
@pytest.mark.parametrize("encode", [False, True])
def test_labels_cover_the_answer_only_and_never_a_docked_position(world, pretrained, task, encode):
    c = cfg(world, pretrained, "--task", task)
    model, tok = MetaLM.from_pretrained(pretrained), Tokenizer.load(pretrained)
    examples = read_examples(c, "train")
    batcher = ExampleBatcher(examples, PromptEncoder(model, tok), tok, 4, 256, seed=0, encode_input=encode)
    batch = batcher.batch(0)
    docked = docked_mask(batch.docks, *batch.input_ids.shape, batch.input_ids.device)
    assert not (docked & (batch.labels != IGNORE_INDEX)).any()
    assert any(d.encoder == "text" for d in batch.docks) == (encode and task != "world-captions")  # no text
    for r, i in enumerate(batcher.indices(0)):
        want = tok.encode(examples[i].answer) + [tok.eos_id]
        assert batch.labels[r][batch.labels[r] != IGNORE_INDEX].tolist() == want


def test_without_answer_eos_the_label_word_alone_is_the_target(world, pretrained):
    """``--answer_eos false``: a classifier's label word, no ``</s>`` after it in the input or the targets."""
    c = cfg(world, pretrained, "--task", "world-entail", "--answer_eos", "false")
    model, tok = MetaLM.from_pretrained(pretrained), Tokenizer.load(pretrained)
    examples = read_examples(c, "train")
    batcher = ExampleBatcher(examples, PromptEncoder(model, tok), tok, 4, 256, 0, False, answer_eos=c.answer_eos)
    batch = batcher.batch(0)
    assert not (batch.input_ids == tok.eos_id).any()
    for r, i in enumerate(batcher.indices(0)):
        assert batch.labels[r][batch.labels[r] != IGNORE_INDEX].tolist() == tok.encode(examples[i].answer)


def test_batches_are_a_pure_function_of_their_index(world, pretrained):
    c = cfg(world, pretrained, "--task", "world-vqa")
    model, tok = MetaLM.from_pretrained(pretrained), Tokenizer.load(pretrained)
    batcher = ExampleBatcher(read_examples(c, "train"), PromptEncoder(model, tok), tok, 4, 256, 0, False)
    full = [b for _, b in zip(range(6), batcher(0), strict=False)]
    resumed = [b for _, b in zip(range(2), batcher(4), strict=False)]
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    # a new epoch reshuffles
    assert batcher.order(0) != batcher.order(1)
    # two ranks see disjoint examples of the same step
    r0 = ExampleBatcher(batcher.examples, batcher.prompts, tok, 4, 256, 0, False, rank=0, world_size=2)
    r1 = ExampleBatcher(batcher.examples, batcher.prompts, tok, 4, 256, 0, False, rank=1, world_size=2)
    for step in range(3):
        a, b = r0.indices(step), r1.indices(step)
        assert len(a) == len(b) == 4 and not set(a) & set(b)


def test_freeze_policies(world, pretrained):
    model = MetaLM.from_pretrained(pretrained)
    configure_freeze(model, cfg(world, pretrained, "--freeze_decoder", "--encoder_freeze", "{vision: none}"))
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.encoders["vision"].parameters())
    assert all(p.requires_grad for p in model.connectors.parameters())
    with pytest.raises(ValueError, match="encoder_freeze names"):
        configure_freeze(model, cfg(world, pretrained, "--encoder_freeze", "{audio: all}"))


def test_bad_config_is_named(world, pretrained):
    with pytest.raises(ValueError, match="--train_data"):
        read_examples(cfg(world, pretrained, "--task", "rte"), "train")
    with pytest.raises(ValueError, match="task"):
        cfg(world, pretrained, "--task", "imagenet")


def test_finetune_end_to_end_with_a_frozen_decoder_and_the_final_eval(world, pretrained, tmp_path):
    out = tmp_path / "ft"
    args = ["--init_from", str(pretrained), "--world", str(world), "--task", "world-vqa", "--out", str(out)]
    args += "--max_steps 6 --batch_size 4 --eval_batches 1 --eval_every 0 --log_every 1 --peak_flops 1e11".split()
    args += ["--freeze_decoder", "--eval_limit", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    proc = subprocess.run(
        launcher + [str(ROOT / "train" / "finetune.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final checkpoint" in proc.stdout and "vqa_accuracy" in proc.stdout
    before, after = MetaLM.from_pretrained(pretrained), MetaLM.from_pretrained(out / "final")
    for (name, p), q in zip(before.decoder.state_dict().items(), after.decoder.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"decoder tensor {name} changed with --freeze_decoder"
    moved = [
        not torch.equal(p, q)
        for p, q in zip(before.connectors.state_dict().values(), after.connectors.state_dict().values(), strict=True)
    ]
    assert any(moved)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "world-vqa" and summary["steps"] == 6 and summary["encode_input"] is True
    vqa = summary["eval"]["tasks"]["vqa"]["results"][0]
    assert vqa["n"] == 6 and 0.0 <= vqa["vqa_accuracy"]["mean"] <= 1.0


def test_help_lists_only_the_fields_finetuning_reads(capsys):
    with pytest.raises(SystemExit):
        parse_finetune_config(["--help"])
    help_text = capsys.readouterr().out
    assert "--task" in help_text and "--encode_input" in help_text and "--max_steps" in help_text
    for pretraining_only in ("--text_shards", "--vision_warmup_steps", "--span_ratio", "--seq_len", "--preset"):
        assert pretraining_only not in help_text
    assert "optimizer steps to train for (default: 300)" in help_text  # finetuning's own default
    cfg = parse_finetune_config(["--max-steps", "7", "--freeze_decoder"])  # the hyphenated spelling still parses
    assert cfg.max_steps == 7 and cfg.freeze_decoder is True and cfg.lr == 3e-4
    assert "--max-steps is deprecated; use --max_steps" in capsys.readouterr().err
