"""Semi-causal batches from samples: layout, spans inside documents, determinism, and the no-leak invariant."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic import tiny_metalm

from data.layout import IMAGE_OFFSET, DockLayout, image_dock, image_ids, image_text_ids
from data.pipeline import BatchStream, PipelineConfig, batches, document_tokens, load_batches, role_skip
from data.prompts import EncodedSeg, ImageSeg, PromptEncoder
from data.reader import ReaderStats, expand_urls, iter_samples
from data.shards import write_coco_captions, write_text, write_vqa
from data.tokenizer import Tokenizer
from metalm import MetaLM
from metalm.loss import IGNORE_INDEX
from train.loop import train
from train.pretraining import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
WORDS = "red green blue circle square triangle left right middle the a is on and of there two three".split()


def documents(seed: int):
    rng = random.Random(seed)
    while True:
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(rng.randint(1, 3))]
        yield {"kind": "text", "text": "\n\n".join(paragraphs)}


def captions(seed: int):
    rng = random.Random(seed)
    while True:
        colour = rng.choice([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
        yield {
            "kind": "caption",
            "image": Image.new("RGB", (8, 8), colour),
            "caption": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))),
        }


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    docs = documents(0)
    return Tokenizer.train([next(docs)["text"] for _ in range(200)], vocab_size=300)


def cfg(**kw) -> PipelineConfig:
    base = dict(seq_len=48, batch_size=4, text_weight=0.5, image_size=(8, 8), image_tokens=5, seed=0)
    return PipelineConfig(**{**base, "span_ratio": 0.25, "span_min": 2, "span_max": 5, **kw})


def test_batch_layout(tokenizer):
    c = cfg()
    batch = next(batches(documents(1), captions(2), tokenizer, c))
    assert batch.input_ids.shape == (4, 48)
    assert batch.attention_mask[:2].all()  # text rows are packed full
    text_dock = next(d for d in batch.docks if d.encoder == "text")
    vision = next(d for d in batch.docks if d.encoder == "vision")
    assert set(vision.batch_index.tolist()) == {2, 3}  # image-text rows come after the text rows
    for row, start in zip(vision.batch_index.tolist(), vision.positions[:, 0].tolist(), strict=True):
        assert batch.input_ids[row, start - 1] == tokenizer.image_start_id
        assert (batch.input_ids[row, start : start + 5] == tokenizer.vec_id).all()
        assert batch.input_ids[row, start + 5] == tokenizer.image_end_id
    assert vision.inputs["pixel_values"].shape[1:] == (3, 8, 8)
    # text spans carry exactly the tokens at their positions
    for i in range(len(text_dock.batch_index)):
        valid = text_dock.positions[i] >= 0
        row = int(text_dock.batch_index[i])
        assert torch.equal(text_dock.inputs["input_ids"][i][valid], batch.input_ids[row, text_dock.positions[i][valid]])
    # padding is never a target
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()


def test_layout_module_builds_the_hand_written_image_and_span_layout(tokenizer):
    tok = tokenizer
    assert image_ids(tok, 3) == [tok.image_start_id, tok.vec_id, tok.vec_id, tok.vec_id, tok.image_end_id]
    assert IMAGE_OFFSET == 1  # the first <vec> follows <image>
    caption = tok.encode("red circle")
    ids, start = image_text_ids(tok, 3, caption)
    assert ids == image_ids(tok, 3) + caption + [tok.eos_id] and ids[start : start + len(caption)] == caption

    pixels = [torch.full((3, 2, 2), float(i)) for i in range(2)]
    dock = image_dock("vision", pixels, [0, 1], [1, 4], 3)
    assert dock.encoder == "vision" and torch.equal(dock.inputs["pixel_values"], torch.stack(pixels))
    assert torch.equal(dock.batch_index, torch.tensor([0, 1]))
    assert torch.equal(dock.positions, torch.tensor([[1, 2, 3], [4, 5, 6]]))

    input_ids = torch.arange(20).view(2, 10)
    layout = DockLayout("vision", "text", 3)
    layout.add_image(1, 4, pixels[0])
    layout.add_span(0, 2, 5)
    layout.add_span(1, 8, 10)
    image, span = layout.docks(input_ids, pad_id=0)
    assert torch.equal(image.positions, torch.tensor([[4, 5, 6]])) and torch.equal(image.batch_index, torch.tensor([1]))
    assert span.encoder == "text" and torch.equal(span.batch_index, torch.tensor([0, 1]))
    assert torch.equal(span.inputs["input_ids"], torch.tensor([[2, 3, 4], [18, 19, 0]]))
    assert torch.equal(span.inputs["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(span.positions, torch.tensor([[2, 3, 4], [8, 9, -1]]))
    assert DockLayout("vision", "text", 3).docks(input_ids, pad_id=0) == []


def test_prompts_and_pretraining_share_the_image_layout(tokenizer):
    """A prompt's image and encoder-read text land where pretraining puts an image-caption item's."""
    c = cfg()
    model = tiny_metalm(tokenizer.vocab_size, img_size=8, patch_size=4, max_len=48)
    prompts = PromptEncoder(model, tokenizer)
    assert (prompts.vision, prompts.text, prompts.image_tokens) == ("vision", "text", c.image_tokens)
    caption = tokenizer.encode("red circle on the left")
    encoded = prompts.encode([ImageSeg(Image.new("RGB", (8, 8), (255, 0, 0))), EncodedSeg("red circle on the left")])
    ids, start = image_text_ids(tokenizer, c.image_tokens, caption)
    assert encoded.ids + [tokenizer.eos_id] == ids
    assert [pos for pos, _ in encoded.images] == [IMAGE_OFFSET] and encoded.spans == [(start, start + len(caption))]


def test_text_spans_never_cross_a_document_end(tokenizer):
    c = cfg(text_weight=1.0, span_ratio=0.4)
    for batch in _take(batches(documents(3), None, tokenizer, c), 10):
        dock = batch.docks[0]
        for i in range(len(dock.batch_index)):
            pos = dock.positions[i][dock.positions[i] >= 0]
            tokens = batch.input_ids[int(dock.batch_index[i]), pos]
            assert (tokens[:-1] != tokenizer.eos_id).all()  # an end of document may close a span, never sit inside


def test_span_ratio_is_respected(tokenizer):
    c = cfg(text_weight=1.0, span_ratio=0.25, seq_len=128, span_min=4, span_max=8)
    covered = total = 0
    for batch in _take(batches(documents(4), None, tokenizer, c), 10):
        covered += int((batch.docks[0].positions >= 0).sum())
        total += batch.input_ids.numel()
    assert 0.15 < covered / total <= 0.25


def test_document_tokens_mark_paragraphs_and_ends(tokenizer):
    ids = document_tokens("red circle\n\nblue square", tokenizer)
    assert ids.count(tokenizer.par_id) == 1 and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids[: ids.index(tokenizer.par_id)]) == "red circle"


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_skip_replays_the_same_stream(tokenizer):
    c = cfg()
    full = _take(batches(documents(5), captions(6), tokenizer, c), 5)
    resumed = _take(batches(documents(5), captions(6), tokenizer, c, skip=3), 2)
    for a, b in zip(full[3:], resumed, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        for da, db in zip(a.docks, b.docks, strict=True):
            assert torch.equal(da.positions, db.positions)


def test_no_leak_on_real_collated_batches(tokenizer):
    """For every loss-counted target, replacing it in the input (and so in any encoder input that holds it)
    leaves the logits that predict it unchanged."""
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    model = tiny_metalm(vocab, encoders=("text", "vision"), max_len=48)
    c = cfg(batch_size=2)
    batch = next(batches(documents(7), captions(8), tokenizer, c))
    with torch.no_grad():
        base = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels, return_logits=True)
        counted = (base.labels[:, 1:] != IGNORE_INDEX).nonzero() + torch.tensor([0, 1])
        assert len(counted) > 40
        for row, t in counted.tolist():
            ids = batch.input_ids.clone()
            ids[row, t] = (ids[row, t] + 1) % vocab
            docks = [_redock(d, ids) for d in batch.docks]
            logits = model(ids, docks, batch.attention_mask).logits
            torch.testing.assert_close(logits[row, t - 1], base.logits[row, t - 1], atol=1e-5, rtol=0)


def _redock(dock, ids):
    """The same dock with its text encoder inputs re-read from ``ids`` (as the pipeline would build them)."""
    if "input_ids" not in dock.inputs:
        return dock
    new = dict(dock.inputs)
    rows = dock.batch_index[:, None].expand_as(dock.positions)
    valid = dock.positions >= 0
    enc = new["input_ids"].clone()
    enc[valid] = ids[rows[valid], dock.positions[valid]]
    new["input_ids"] = enc
    return type(dock)(dock.encoder, new, dock.batch_index, dock.positions)


# ---------------------------------------------------------------- BatchStream: batches from shards, with workers


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[list[str], list[str]]:
    """Tiny text shards (4 x 10 documents) and caption shards (3 x 4 pairs of 8x8 PNGs)."""
    root = tmp_path_factory.mktemp("shards")
    docs = documents(11)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": next(docs)["text"]}) + "\n" for _ in range(40)))
    write_text(root / "docs.jsonl", str(root / "text-%06d.tar"), max_samples_per_shard=10)
    caps, images, annotations = captions(12), [], []
    for i in range(12):
        sample = next(caps)
        sample["image"].save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        annotations.append({"id": i, "image_id": i, "caption": sample["caption"]})
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    write_coco_captions(root / "captions.json", root, str(root / "caption-%06d.tar"), max_samples_per_shard=4)
    return expand_urls(str(root / "text-*.tar")), expand_urls(str(root / "caption-*.tar"))


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.attention_mask, b.attention_mask)
        assert [d.encoder for d in a.docks] == [d.encoder for d in b.docks]
        for da, db in zip(a.docks, b.docks, strict=True):
            assert torch.equal(da.batch_index, db.batch_index) and torch.equal(da.positions, db.positions)
            assert da.inputs.keys() == db.inputs.keys()
            assert all(torch.equal(da.inputs[k], db.inputs[k]) for k in da.inputs)


def test_batch_stream_in_process_gives_the_batches_it_always_did(tokenizer, shards):
    """num_workers=0 (the default) must keep the batches of ``batches(iter_samples(...))``, skip included."""
    text, caps = shards
    c = cfg()
    for skip in (0, 2):
        kw = dict(shuffle_buffer=8, seed=3, resample=True)
        want = _take(batches(iter_samples(text, **kw), iter_samples(caps, **kw), tokenizer, c, skip), 4)
        stats = ReaderStats()
        got = _take(load_batches(BatchStream(text, caps, tokenizer, c, skip=skip, **kw), 0, stats=stats), 4)
        assert_same_batches(got, want)
        assert stats.samples > 0 and not stats.skipped


def test_workers_take_turns_and_resume_exactly(tokenizer, shards):
    """With 2 workers, global batch g is role g % 2's (g // 2)-th batch; a loader resumed at an odd or even skip
    delivers exactly the tail of the unresumed stream; starting workers leaves the global torch RNG alone."""
    text, caps = shards
    c = cfg()
    kw = dict(shuffle_buffer=8, seed=3)
    rng = torch.get_rng_state()
    full = _take(load_batches(BatchStream(text, caps, tokenizer, c, **kw), 2), 7)
    assert torch.equal(torch.get_rng_state(), rng)
    roles = [[b for b, _ in _take(BatchStream(text, caps, tokenizer, c, **kw).role_batches(r, 2), 4)] for r in (0, 1)]
    assert_same_batches(full, [roles[g % 2][g // 2] for g in range(7)])
    assert not torch.equal(roles[0][0].input_ids, roles[1][0].input_ids)  # the roles read different samples
    for skip in (3, 4):
        resumed = _take(load_batches(BatchStream(text, caps, tokenizer, c, skip=skip, **kw), 2), 7 - skip)
        assert_same_batches(resumed, full[skip:])


def test_role_skip_starts_each_worker_at_its_next_global_batch():
    for roles in (1, 2, 3, 5):
        for skip in range(12):
            for worker in range(roles):
                role = (worker + skip) % roles
                assert role_skip(skip, role, roles) * roles + role == skip + worker


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reader_skips_in_workers_reach_the_training_process(tokenizer, shards, tmp_path, num_workers):
    """A truncated shard read in a worker process is counted in the caller's stats, exactly: the sum of the
    counts each role shipped with the batches that were delivered."""
    text, _ = shards
    data = Path(text[0]).read_bytes()
    (tmp_path / "a-truncated.tar").write_bytes(data[: len(data) // 5 + 7])  # sorts first: role 0 reads it first
    for url in text:
        (tmp_path / Path(url).name).write_bytes(Path(url).read_bytes())
    urls = expand_urls(str(tmp_path))
    c = cfg(text_weight=1.0)
    stats = ReaderStats()
    _take(load_batches(BatchStream(urls, None, tokenizer, c), num_workers, stats=stats), 4)
    assert stats.skipped["damaged_tar"] >= 1 and stats.samples > 0
    assert stats.examples and "a-truncated.tar" in stats.examples[0]
    roles = max(num_workers, 1)
    want = ReaderStats()
    for role in range(roles):
        for _, delta in _take(BatchStream(urls, None, tokenizer, c).role_batches(role, roles), 4 // roles):
            want.add(delta)
    assert (stats.samples, stats.skipped) == (want.samples, want.skipped)


def _vqa_shard(root: Path) -> str:
    """A real VQA shard (data.shards.write_vqa) of three questions on one 8x8 image."""
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "1.png")
    questions = [{"image_id": 1, "question": f"What colour {i}?", "question_id": i} for i in range(3)]
    answers = [{"answer": "red", "answer_id": 1}]
    annotations = [{"question_id": i, "multiple_choice_answer": "red", "answers": answers} for i in range(3)]
    (root / "q.json").write_text(json.dumps({"questions": questions}))
    (root / "a.json").write_text(json.dumps({"annotations": annotations}))
    return write_vqa(root / "q.json", root / "a.json", root, str(root / "vqa-%06d.tar"), image_pattern="{image_id}.png")


def test_samples_of_the_wrong_kind_are_skipped_counted_and_named(tokenizer, shards, tmp_path):
    """A VQA or text shard given as image-text shards, and a caption shard given as text shards, are skipped and
    counted as ``wrong_kind`` naming the shard (they stopped training with a bare KeyError)."""
    text, caps = shards
    vqa = _vqa_shard(tmp_path).shards
    stats = ReaderStats()
    stream = BatchStream([caps[0], *text], [*vqa, text[0], *caps], tokenizer, cfg(), resample=True)
    got = _take(load_batches(stream, 0, stats=stats), 3)
    assert len(got) == 3 and stats.samples > 0
    # the text stream reads the caption shard, the image-text stream the VQA shard and a text shard
    assert stats.skipped["wrong_kind"] >= 3 + 10 + 4
    assert set(stats.skipped) == {"wrong_kind"}
    examples = "\n".join(stats.examples)
    assert f"{vqa[0]} key" in examples and "a vqa sample where caption samples are read" in examples
    assert f"{text[0]} key" in examples and "a text sample where caption samples are read" in examples
    assert f"{caps[0]} key" in examples and "a caption sample where text samples are read" in examples


_SIGNAL_SCRIPT = """
import os, pickle, signal, sys
from data.pipeline import BatchStream, load_batches
text, caps, tokenizer, cfg = pickle.load(sys.stdin.buffer)
signal.signal(signal.SIGTERM, lambda *_: None)  # the training loop's handler: finish the step, then save
it = load_batches(BatchStream(text, caps, tokenizer, cfg), 2)
got = [next(it), next(it)]
os.killpg(0, signal.SIGTERM)  # this process leads its own group (start_new_session)
got += [next(it), next(it)]
pickle.dump([(b.input_ids, b.labels) for b in got], sys.stdout.buffer)
"""


def test_workers_outlive_a_stop_signal_to_the_process_group(tokenizer, shards):
    """Ctrl-C and schedulers signal a whole process group; the workers must live on so that training can finish
    its step and save a checkpoint (the training process handles the signal itself)."""
    text, caps = shards
    c = cfg()
    roles = [[b for b, _ in _take(BatchStream(text, caps, tokenizer, c).role_batches(r, 2), 2)] for r in (0, 1)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_SCRIPT],
        input=pickle.dumps((text, caps, tokenizer, c)),
        capture_output=True,
        env=env,
        timeout=120,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = pickle.loads(proc.stdout)
    for (ids, labels), want in zip(got, [roles[g % 2][g // 2] for g in range(4)], strict=True):
        assert torch.equal(ids, want.input_ids) and torch.equal(labels, want.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_workers_pin_batches_for_the_gpu(tokenizer, shards):
    text, caps = shards
    batch = next(load_batches(BatchStream(text, caps, tokenizer, cfg()), 2, pin_memory=True))
    tensors = [batch.input_ids, batch.labels, batch.attention_mask]
    tensors += [t for d in batch.docks for t in (*d.inputs.values(), d.batch_index, d.positions)]
    assert all(t.is_pinned() for t in tensors)


def test_training_on_workers_resumes_exactly(tokenizer, shards, tmp_path):
    """The training loop on batches from 2 workers, stopped by SIGTERM after an odd number of batches and resumed,
    ends with the weights of an uninterrupted run (dropout on: starting the workers must not draw from the RNG)."""
    text, caps = shards
    c = cfg(seq_len=32)
    vocab = tokenizer.vocab_size

    def model(seed: int = 0) -> MetaLM:
        return tiny_metalm(
            vocab,
            seed=seed,
            training=True,
            encoders=("text", "vision"),
            max_len=32,
            n_layers=1,
            n_heads=2,
            dropout=0.1,
            init_std=0.02,
        )

    def data(skip: int):
        return load_batches(BatchStream(text, caps, tokenizer, c, skip=skip), 2)

    def interrupted(skip: int):
        for i, batch in enumerate(data(skip), start=skip):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    def run_cfg(out, **kw) -> PretrainConfig:
        schedule = dict(max_steps=5, lr=3e-3, warmup_steps=1, ckpt_every=100, log_every=1, eval_every=0)
        return PretrainConfig(out=str(out), batch_size=4, seq_len=32, peak_flops=1e11, num_workers=2, **schedule, **kw)

    full_model = model()
    full = train(run_cfg(tmp_path / "full"), full_model, data)
    first = train(run_cfg(tmp_path / "cut"), model(), interrupted)
    assert first.stopped_by_signal and first.step == 3  # resumes at batch 3: worker 0 plays role 1
    resumed_model = model(seed=1)
    resumed = train(run_cfg(tmp_path / "cut", resume=True), resumed_model, data)
    assert first.losses + resumed.losses == full.losses
    for k, v in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[k], v), k
