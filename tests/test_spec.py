"""Model specs: presets are specs, specs are checked field by field, pretrained parts compose and a checkpoint of
them reloads from a copied directory with the originals deleted; the real SmolLM2 GGUF matches transformers."""

from __future__ import annotations

import shutil

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors

from data.tokenizer import SPECIAL_TOKENS, Tokenizer
from encoders.tokenization import TextTokenizer
from metalm import MetaLM
from metalm.presets import PRESETS, get_preset
from metalm.spec import SpecError, merge, resolve_spec
from tests.conftest import REAL_TEXT, needs_real_parts, tiny_llama

WORDS = "the a red blue green square circle triangle is on left right of and big small".split()


def word_tokenizer(words: list[str], specials: list[str]) -> HFTokenizer:
    """A word-level tokenizer over ``words`` (specials first): small enough to match a tiny model's vocabulary."""
    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.fixture
def llama_dir(tmp_path):
    """A tiny random Llama whose vocabulary is exactly its own word tokenizer's (no MetaLM specials in it)."""
    tok = word_tokenizer(WORDS, ["<unk>", "<s>", "</s_>"])
    path = tmp_path / "llama"
    tiny_llama(vocab_size=tok.get_vocab_size()).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny random BERT with a WordLevel tokenizer that adds [CLS] .. [SEP], like a real BERT's."""
    from transformers import BertConfig, BertModel

    tok = word_tokenizer(WORDS, ["[UNK]", "[PAD]", "[CLS]", "[SEP]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path = tmp_path / "bert"
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_a_random_weight_preset_is_its_spec_built_the_same_way():
    """get_preset and from_spec give one config, and the same seed gives the same weights."""
    torch.manual_seed(0)
    a = MetaLM(get_preset("tiny", vocab_size=300, max_seq_len=64))
    torch.manual_seed(0)
    b, tokenizer_dir = MetaLM.from_spec("tiny", vocab_size=300, max_seq_len=64)
    assert tokenizer_dir is None  # a fresh decoder: the job brings the tokenizer
    assert a.config == b.config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert b.spec == resolve_spec({"preset": "tiny"}, PRESETS)
    vl = resolve_spec({"preset": "vl-medium"}, PRESETS)
    assert vl["encoders"]["text"]["kind"] == "native_text"  # its text rows get semi-causal spans


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"preset": "huge"}, "model.preset = 'huge': expected one of tiny"),
        ({"decoder": {"dim": 8}, "encoderz": {}}, r"model: unknown field\(s\) \['encoderz'\]"),
        ({"decoder": "tiny"}, "model.decoder = 'tiny': expected a mapping"),
        ({"decoder": {"from_hf": "a", "from_gguf": "b"}}, "model.decoder gives from_hf and from_gguf"),
        ({"decoder": {"from_hf": "a", "dim": 8}}, r"model.decoder: fields \['dim'\] beside a pretrained decoder"),
        ({"decoder": {"dims": 8}}, r"model.decoder: unknown field\(s\) \['dims'\]"),
        ({"decoder": {"from_hf": 3}}, "model.decoder.from_hf = 3: expected a string"),
        ({"decoder": {}, "encoders": {"t": {"kind": "bert"}}}, "model.encoders.t.kind = 'bert': expected one of"),
        ({"decoder": {}, "encoders": {"t": {"kind": "timm", "freeze": "half"}}}, "model.encoders.t.freeze = 'half'"),
        ({"decoder": {}, "encoders": {"t": {"kind": "timm", "size": 3}}}, r"model.encoders.t: unknown field\(s\)"),
        (
            {"decoder": {}, "encoders": {"t": {"kind": "native_text", "tokenizer": "x"}}},
            "model.encoders.t.tokenizer = 'x': a native_text encoder reads the decoder's ids",
        ),
        (
            {"decoder": {}, "encoders": {"t": {"kind": "joint_vl", "weights": "w"}}},
            "model.encoders.t.weights: a joint_vl encoder has no pretrained weights",
        ),
        (
            {"decoder": {}, "encoders": {"t": {"kind": "timm", "connector": {"kind": "conv"}}}},
            "model.encoders.t.connector = {'kind': 'conv'}",
        ),
    ],
)
def test_a_bad_spec_names_the_field_and_what_is_allowed(spec, message):
    with pytest.raises(SpecError, match=message):
        resolve_spec(spec, PRESETS)


def test_merge_replaces_what_changes_kind_and_null_removes_an_encoder():
    spec = resolve_spec(
        {
            "preset": "tiny",
            "decoder": {"n_layers": 6},
            "encoders": {"vision": None, "text": {"kind": "hf_text", "weights": "w"}},
        },
        PRESETS,
    )
    assert spec["decoder"]["n_layers"] == 6 and spec["decoder"]["dim"] == 256  # fields merge
    assert list(spec["encoders"]) == ["text"]
    assert spec["encoders"]["text"] == {"kind": "hf_text", "weights": "w"}  # nothing of the native encoder left
    pretrained = merge(PRESETS["tiny"], {"decoder": {"from_hf": "d"}})
    assert pretrained["decoder"] == {"from_hf": "d"}  # no preset shape beside a pretrained decoder
    same_kind = merge(PRESETS["tiny"], {"encoders": {"text": {"freeze": "all"}}})
    assert same_kind["encoders"]["text"]["args"] == PRESETS["tiny"]["encoders"]["text"]["args"]


def test_pretrained_parts_compose_grow_the_vocabulary_and_reload_from_a_copy(llama_dir, bert_dir, tmp_path):
    from transformers import LlamaForCausalLM

    spec = {
        "decoder": {"from_hf": str(llama_dir)},
        "encoders": {"text": {"kind": "hf_text", "weights": str(bert_dir), "freeze": "all_but_last_1"}},
    }
    tokenizer = Tokenizer.load(llama_dir)
    n = len(WORDS) + 3
    assert tokenizer.vocab_size == n + len(SPECIAL_TOKENS)  # MetaLM's specials appended after its own ids
    model, tokenizer_dir = MetaLM.from_spec(spec, vocab_size=tokenizer.vocab_size)
    assert tokenizer_dir == llama_dir
    emb = model.decoder.tok_emb.weight.detach()
    assert emb.shape[0] == tokenizer.vocab_size
    assert torch.allclose(emb[n:], emb[:n].mean(0).expand(len(SPECIAL_TOKENS), -1))  # new rows: the mean row
    hf = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    ids = torch.tensor([tokenizer.encode("the red square is on the left of a blue circle")])
    with torch.no_grad():
        ours = model.eval()(ids).logits[..., :n]
        theirs = hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    text = model.encoders["text"]
    assert text.tokenizer.encode("red square") == [2, 4 + WORDS.index("red"), 4 + WORDS.index("square"), 3]
    assert [p.requires_grad for p in text.blocks()[0].parameters()] == [False] * 16
    assert all(p.requires_grad for p in text.blocks()[-1].parameters())

    (llama_dir / "chat_template.jinja").write_text("{{ messages }}")
    model, _ = MetaLM.from_spec(spec, vocab_size=tokenizer.vocab_size)  # the same weights: all pretrained
    model.decoder_tokenizer = tokenizer.backend
    model.save_pretrained(tmp_path / "ckpt")
    shutil.copytree(tmp_path / "ckpt", tmp_path / "copy")
    for gone in (tmp_path / "ckpt", llama_dir, bert_dir):
        shutil.rmtree(gone)
    loaded = MetaLM.from_pretrained(tmp_path / "copy")
    assert loaded.spec == resolve_spec(spec, PRESETS)
    assert loaded.encoders["text"].tokenizer.fingerprint == text.tokenizer.fingerprint
    assert loaded.encoders["text"].tokenizer.name == "bert"
    assert Tokenizer.load(tmp_path / "copy").encode("blue circle") == tokenizer.encode("blue circle")
    assert (tmp_path / "copy" / "chat_template.jinja").read_text() == "{{ messages }}"
    assert set(loaded.tokenizer_files) == {"chat_template.jinja", "generation_config.json"}
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_missing_pretrained_part_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"assets/smollm2: no config.json .*python -m metalm.assets"):
        MetaLM.from_spec("language-small")
    with pytest.raises(ValueError, match="preset 'language-small' has a pretrained decoder"):
        get_preset("language-small")
    spec = {"decoder": {"preset": "tiny"}, "encoders": {"t": {"kind": "hf_text", "weights": "nowhere"}}}
    with pytest.raises(FileNotFoundError, match="model.encoders.t.weights = nowhere: no such file"):
        MetaLM.from_spec(spec, vocab_size=300)
    with pytest.raises(FileNotFoundError, match="model.decoder.from_gguf = x.gguf: no such file"):
        MetaLM.from_spec({"decoder": {"from_gguf": "x.gguf"}})


def test_an_own_tokenizer_that_does_not_fit_the_encoder_is_refused(bert_dir, tmp_path):
    from encoders import HFTextEncoder

    big = word_tokenizer([f"w{i}" for i in range(200)], ["[UNK]"])
    big.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="has more ids than the encoder's .*-row embedding table"):
        HFTextEncoder(str(bert_dir), tokenizer=TextTokenizer.load(tmp_path))


@pytest.fixture(scope="module")
def smollm2(real_assets):
    """The real SmolLM2 directory and transformers' own model loaded from it."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = real_assets / "smollm2"
    return path, LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@needs_real_parts
def test_our_decoder_on_the_real_smollm2_matches_transformers(smollm2):
    """Logits within 1e-4, the same perplexity on a real passage, token-identical greedy chat answers."""
    from metalm import Decoder

    path, hf, hf_tok = smollm2
    ours = Decoder.from_hf(str(path))
    assert (ours.cfg.n_layers, ours.cfg.dim, ours.cfg.n_heads, ours.cfg.n_kv_heads) == (30, 576, 9, 3)
    assert (ours.cfg.rope_theta, ours.cfg.vocab_size, ours.cfg.tie_embeddings) == (1e5, 49152, True)
    ids = hf_tok(REAL_TEXT[0], return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ours(ids).logits, hf(ids).logits
        assert (a - b).abs().max() < 1e-4
        nll = [torch.nn.functional.cross_entropy(x[0, :-1], ids[0, 1:]) for x in (a, b)]
    assert abs(nll[0].exp() - nll[1].exp()) < 1e-3 * nll[1].exp()
    assert nll[1].exp() < 30  # a real language model reads real English
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = hf_tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt = prompt["input_ids"]
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    mine = ours.generate(prompt, max_new_tokens=12)
    assert torch.equal(mine[:, : theirs.shape[1]], theirs)
    assert "Paris" in hf_tok.decode(theirs[0, prompt.shape[1] :])


@needs_real_parts
def test_a_gguf_decoder_in_a_spec_is_converted_once_into_the_cache(smollm2, tmp_path, monkeypatch):
    from metalm.assets import smollm2_gguf

    monkeypatch.setenv("METALM_CACHE", str(tmp_path / "cache"))
    spec = {"decoder": {"from_gguf": str(smollm2_gguf())}}
    tokenizer_dir = resolve_then_tokenizer_dir(spec)
    tokenizer = Tokenizer.load(tokenizer_dir)
    model, again = MetaLM.from_spec(spec, vocab_size=tokenizer.vocab_size)
    assert again == tokenizer_dir and tokenizer_dir.parent == tmp_path / "cache" / "gguf"
    reference = MetaLM.from_spec({"decoder": {"from_hf": str(smollm2[0])}}, vocab_size=tokenizer.vocab_size)[0]
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def resolve_then_tokenizer_dir(spec):
    from metalm.spec import decoder_tokenizer_dir

    return decoder_tokenizer_dir(resolve_spec(spec, PRESETS))


def test_an_encoder_checkpoint_missing_weights_is_an_error_not_random_weights(bert_dir):
    from safetensors.torch import load_file, save_file

    from encoders import HFTextEncoder

    HFTextEncoder(str(bert_dir))  # whole: loads (its pooler is left out without a word)
    state = load_file(str(bert_dir / "model.safetensors"))
    gone = next(k for k in state if "layer.1.attention.self.query.weight" in k)
    save_file({k: v for k, v in state.items() if k != gone}, str(bert_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"bert: the checkpoint lacks encoder weights \['encoder.layer.1.attention"):
        HFTextEncoder(str(bert_dir))
