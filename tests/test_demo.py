"""The instruction-following demo: the engine (streaming, greedy parity, stop strings, every bad input), the terminal
chat driven through a pseudo-terminal, and the web page driven in headless Chromium.

The checkpoint is a tiny random MetaLM taught, in a fraction of a second, to answer two pictures ("a red circle.",
"a blue square."), so the end-to-end tests read real sentences; they still compare with what the engine answers
in-process, never with a hard-coded string. Tools the end-to-end tests need (pexpect, selenium, Debian's chromium
and chromium-driver) are installed here when missing; a failed install skips those tests with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import queue
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from synthetic import tiny_metalm

from data.prompts import ImageSeg
from data.templates import Turn, chat_prompt
from data.tokenizer import Tokenizer
from metalm import MetaLM
from metalm.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` with an install whose packages do not list demo/
    sys.path.insert(0, str(ROOT))

from demo import MAX_IMAGE_BYTES, DemoError, Settings, parse_settings  # noqa: E402
from demo.chat import build_parser as chat_parser  # noqa: E402
from demo.chat import main as chat_main  # noqa: E402
from demo.engine import Chat, Engine, load_checkpoint, load_image  # noqa: E402
from demo.web import MAX_BODY, DemoServer  # noqa: E402
from demo.web import build_parser as web_parser  # noqa: E402
from demo.web import main as web_main  # noqa: E402

QUESTION = "What is in the picture?"
TEXTS = [
    "a red circle on the left and a blue square on the right.",
    "a green triangle in the middle.",
    "User: What is in the picture?\nAssistant: a red circle.\n",
    "User: What colour is it?\nAssistant: blue.\n",
    "the quick brown fox jumps over the lazy dog.",
    "Question: how many shapes are there? Answer: two.",
]
E2E = ["--greedy", "--max_new_tokens", "12"]  # the front ends' flags; ANSWER below decodes the same way
GREEDY = Settings(greedy=True, max_new_tokens=12)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


def _picture(shape: str, colour: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (32, 32), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)((6, 8, 24, 26), fill=colour)
    return img


RED, BLUE = _picture("circle", (220, 30, 30)), _picture("square", (30, 30, 220))


def _teach(engine: Engine, examples: list[tuple[str, Image.Image, str]], steps: int = 40) -> None:
    """A few AdamW steps on chat-formatted examples, so the random model answers them (loss ~0.003)."""
    prompts, lengths = [], []
    for question, image, answer in examples:
        encoded = engine.prompts.encode(chat_prompt([Turn("user", question, [image])], encode_user=True))
        prompts.append(encoded + engine.tokenizer.encode(f" {answer}\n"))
        lengths.append(len(encoded.ids))
    ids, mask, docks = engine.prompts.collate(prompts)
    labels = ids.masked_fill(mask == 0, -100)
    for row, n in enumerate(lengths):
        labels[row, :n] = -100
    model = engine.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(ids, docks, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is several times faster than two when another job shares the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tok = Tokenizer.train(TEXTS * 3, vocab_size=400)
    engine = Engine(tiny_metalm(tok.vocab_size, img_size=32, patch_size=8, max_len=256), tok)
    _teach(
        engine,
        [
            (QUESTION, RED, "a red circle."),
            (QUESTION, BLUE, "a blue square."),
            ("What colour is it?", RED, "red."),
            ("What colour is it?", BLUE, "blue."),
        ],
    )
    path = tmp_path_factory.mktemp("demo") / "ckpt"
    engine.model.save_pretrained(path)
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint) -> Engine:
    return load_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Good and bad image files: a picture, text named .png, a truncated PNG, an empty file."""
    d = tmp_path_factory.mktemp("images")
    RED.save(d / "red.png")
    BLUE.save(d / "blue.png")
    (d / "notes.png").write_text("this is not an image\n")
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    noise.save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "empty.png").write_bytes(b"")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def answer(engine) -> str:
    """What the front ends must show for QUESTION about the red picture, from the engine in this process."""
    reply = Chat(engine, GREEDY).ask(QUESTION, [RED])
    assert reply.text, "the test model gives an empty answer; the end-to-end checks need text"
    return reply.text


def _followup(engine: Engine, image: Image.Image | None) -> str:
    """The in-process answer to "What colour is it?" (with ``image``) after QUESTION about the red picture."""
    chat = Chat(engine, GREEDY)
    chat.ask(QUESTION, [RED])
    return chat.ask("What colour is it?", [image] if image else []).text


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _scripted(tokens: list[int], consumed: list[int]):
    """A stand-in for ``model.generate`` that streams ``tokens`` and records how many the engine took."""

    def generate(ids, docks=None, *, max_new_tokens, on_token, **_):
        for token in tokens[:max_new_tokens]:
            consumed.append(token)
            on_token(torch.tensor([token]))
        return ids

    return generate


# ---------------------------------------------------------------------------------------------------- engine


def test_streamed_pieces_make_the_answer_and_match_a_manual_greedy_loop(engine):
    assert engine.encode_user  # the model has a text encoder, so instructions go through it by default
    chat, pieces = Chat(engine, GREEDY), []
    reply = chat.ask(QUESTION, [RED], on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == reply.text == "a red circle."
    assert reply.finish_reason == "stop"  # the answer's line ended

    prompt = [Turn("user", QUESTION, [RED])]
    ids, _, docks = engine.prompts.collate([engine.prompts.encode(chat_prompt(prompt, encode_user=True))])
    assert reply.prompt_tokens == ids.shape[1]
    manual = []
    with torch.no_grad():
        for _ in range(len(reply.token_ids)):  # no KV cache, no streaming: the whole sequence every step
            token = int(engine.model(ids, docks).logits[0, -1].argmax())
            manual.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert manual == reply.token_ids
    assert engine.tokenizer.decode(manual).split("\n")[0].strip() == reply.text
    assert [(t.role, t.text, len(t.images)) for t in chat.turns] == [
        ("user", QUESTION, 1),
        ("assistant", reply.text, 0),
    ]

    second = chat.ask("What colour is it?", [BLUE])  # multi-turn: the first exchange stays in the prompt
    assert second.prompt_tokens > reply.prompt_tokens + 20 and len(chat.turns) == 4 and second.dropped_turns == 0
    short = Chat(engine, Settings(greedy=True, max_new_tokens=2)).ask(QUESTION, [BLUE])
    assert (short.text, short.finish_reason) == ("a blue", "length")


def test_sampling_with_a_seed_is_reproducible(engine):
    settings = Settings(greedy=False, temperature=1.5, top_k=50, top_p=0.95, seed=7, max_new_tokens=8)
    first, again = (Chat(engine, settings).ask(QUESTION, [RED]) for _ in range(2))
    assert first.token_ids == again.token_ids and first.text == again.text


def test_stop_string_multibyte_characters_and_eos(engine, monkeypatch):
    tok = engine.tokenizer
    script = tok.encode(" 日本 ok\nUser: more")
    assert any(tok.decode(script[:i]).endswith("\ufffd") for i in range(1, len(script)))  # split characters
    consumed: list[int] = []
    monkeypatch.setattr(engine.model, "generate", _scripted(script, consumed))
    pieces: list[str] = []
    reply = Chat(engine, Settings(greedy=True, max_new_tokens=40)).ask("hi", on_text=pieces.append)
    assert (reply.text, reply.finish_reason) == ("日本 ok", "stop")
    assert "".join(pieces) == reply.text and not any("\ufffd" in p for p in pieces) and len(pieces) > 1
    newline = next(i for i in range(len(script)) if "\n" in tok.decode(script[: i + 1]))
    assert len(consumed) == newline + 1  # generation ended at the stop string, not at max_new_tokens

    consumed.clear()
    monkeypatch.setattr(engine.model, "generate", _scripted([*tok.encode(" hi there"), tok.eos_id, 5], consumed))
    reply = Chat(engine).ask("hi")
    assert (reply.text, reply.finish_reason, consumed[-1]) == ("hi there", "eos", tok.eos_id)
    assert tok.eos_id not in reply.token_ids


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"temperature": 0}, "use greedy decoding"),
        ({"top_p": 1.5}, r"top_p = 1.5: expected a number in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens = 0: expected at least 1"),
        ({"top_k": -1}, "top_k = -1"),
        ({"seed": -3}, "seed = -3"),
        ({"max_new_tokens": 2.5}, "expected an integer"),
        ({"greedy": "yes"}, "greedy = 'yes'"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(DemoError, match=message):
        Settings(**fields)


def test_settings_parse_from_text():
    s = parse_settings({"greedy": "yes", "seed": "", "top_k": "5", "temperature": "0.5"}, Settings(seed=3))
    assert s == Settings(greedy=True, seed=None, top_k=5, temperature=0.5)
    for values, message in [
        ({"temperature": "hot"}, "temperature = 'hot': expected a number"),
        ({"greedy": "maybe"}, "expected true or false"),
        ({"top_k": "1.5"}, "expected an integer"),
        ({"beam": "2"}, "unknown setting 'beam': expected one of max_new_tokens"),
    ]:
        with pytest.raises(DemoError, match=message):
            parse_settings(values)


def test_bad_images_are_refused_with_their_reason(images, tmp_path):
    cases = {
        tmp_path / "missing.png": "missing.png: image file not found",
        images["notes"]: "notes.png: not an image PIL can read",
        images["truncated"]: r"truncated.png: not a readable image \(.*truncated",
        images["empty"]: "empty.png: the file is empty",
    }
    for path, message in cases.items():
        with pytest.raises(DemoError, match=message):
            load_image(path)
    with pytest.raises(DemoError, match="cat.jpg: not an image PIL can read"):
        load_image(b"GIF89a garbage", name="cat.jpg")  # an upload is named by its file name
    assert load_image(images["red"]).size == (32, 32) and load_image(images["red"].read_bytes()).mode == "RGB"


def test_images_are_kept_at_the_encoders_size_with_the_same_pixels(engine):
    photo = Image.frombytes("RGB", (97, 61), bytes(range(256)) * 70)
    small = engine.prepare(photo)
    assert small.size == (32, 32)
    original, prepared = (engine.prompts.encode([ImageSeg(i)]).images[0][1] for i in (photo, small))
    assert torch.equal(original, prepared)  # what a conversation keeps docks exactly as the upload would


def test_huge_images_are_refused_before_decoding(tmp_path):
    (tmp_path / "wide.png").write_bytes(_png_header(8000, 6000))  # 48 MP declared, a few bytes of data
    start = time.perf_counter()
    with pytest.raises(
        DemoError,
        match=r"wide.png: the image is 8000x6000 = 48.0 megapixels; images are limited "
        r"to 40 megapixels",
    ):
        load_image(tmp_path / "wide.png")
    with pytest.raises(DemoError, match="too large to decode safely .*limited to 40 megapixels"):
        load_image(_png_header(20000, 20000), name="bomb.png")  # beyond PIL's own DecompressionBombError limit
    assert time.perf_counter() - start < 2  # nothing was decoded
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(DemoError, match="big.png: the file is 20.0 MB; images are limited to 20 MB"):
        load_image(big)


def test_empty_and_overlong_instructions(engine):
    chat = Chat(engine, GREEDY)
    with pytest.raises(DemoError, match="the instruction is empty"):
        chat.ask("  \n ")
    text = "word " * 300
    n = engine.prompt_tokens([Turn("user", text)])
    limit = engine.max_seq_len - GREEDY.max_new_tokens
    with pytest.raises(
        DemoError,
        match=rf"too long: .* takes {n} tokens.* at most 256 tokens and 12 of them are kept "
        rf"for the answer, so the limit is {limit}",
    ):
        chat.ask(text)
    with pytest.raises(DemoError, match="max_new_tokens = 256 leaves no room for the prompt"):
        Chat(engine, Settings(max_new_tokens=256)).ask("hi")
    assert chat.turns == []  # a refused instruction leaves the conversation as it was


def test_oldest_turns_are_dropped_to_fit_the_window(engine):
    past = [
        Turn("user", QUESTION, [RED]),
        Turn("assistant", "a red circle."),
        Turn("user", QUESTION, [BLUE]),
        Turn("assistant", "a blue square."),
    ]
    new = Turn("user", "What colour is it?", [RED])
    fits = engine.prompt_tokens([*past[2:], new])
    assert engine.prompt_tokens([*past, new]) > fits
    chat, notices = Chat(engine, Settings(greedy=True, max_new_tokens=engine.max_seq_len - fits)), []
    chat.turns = list(past)
    reply = chat.ask(new.text, [RED], on_notice=notices.append)
    assert reply.dropped_turns == 2 and reply.prompt_tokens == fits
    assert notices == [
        "the conversation no longer fits the model's 256-token window: left out the 2 oldest turns (1 exchange)"
    ]
    assert [t.text for t in chat.turns] == [QUESTION, "a blue square.", "What colour is it?", reply.text]


def test_checkpoint_errors_name_the_path(checkpoint, tmp_path):
    with pytest.raises(DemoError, match=f"checkpoint {tmp_path / 'nope'}: not found; expected a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    broken = {"config.json": b"{not json", "model.safetensors": b"\0garbage", "tokenizer.json": b"[]"}
    for name, content in broken.items():
        bad = tmp_path / name.split(".")[0]
        shutil.copytree(checkpoint, bad)
        (bad / name).write_bytes(content)
        with pytest.raises(DemoError, match=rf"checkpoint {bad}: .*{name}"):
            load_checkpoint(bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(DemoError, match="cannot load the tokenizer .*expected a directory holding tokenizer.json"):
        load_checkpoint(bad)


def test_preset_check(checkpoint, engine, tmp_path):
    with pytest.raises(
        DemoError,
        match=r"is not a 'tiny' model: decoder.dim is 32 where the preset has 256.*It is: "
        r"decoder 2 layers x 32 wide",
    ):
        load_checkpoint(checkpoint, preset="tiny")
    with pytest.raises(DemoError, match="--preset 'huge': unknown preset; expected one of tiny, tiny-gpt"):
        load_checkpoint(checkpoint, preset="huge")

    recorded = tmp_path / "recorded"
    shutil.copytree(checkpoint, recorded)
    (recorded / "train_config.json").write_text(json.dumps({"preset": "tiny-gpt"}))
    with pytest.raises(DemoError, match="trained from preset 'tiny-gpt' \\(train_config.json\\), not 'tiny'"):
        load_checkpoint(recorded, preset="tiny")
    assert load_checkpoint(recorded, preset="tiny-gpt").preset == "tiny-gpt"

    gpt = tmp_path / "gpt"
    MetaLM(get_preset("tiny-gpt", vocab_size=engine.tokenizer.vocab_size)).save_pretrained(gpt)
    engine.tokenizer.save(gpt)
    with pytest.raises(DemoError, match=r"not a 'tiny' model: encoders are \[\] where the preset has \['text', "):
        load_checkpoint(gpt, preset="tiny")
    text_only = load_checkpoint(gpt, preset="tiny-gpt")
    assert not text_only.encode_user and not text_only.has_vision
    with pytest.raises(DemoError, match="no vision encoder"):
        Chat(text_only).ask(QUESTION, [RED])


# ---------------------------------------------------------------------------------------------------- front ends


def _pip(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        pass
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"{package} is missing and `pip install {package}` failed: {done.stderr.strip()[-300:]}")
    return __import__(module)


@pytest.mark.parametrize("build_parser", [chat_parser, web_parser])
def test_flags_use_underscores_and_still_accept_hyphens(build_parser, capsys):
    new = ["--max_new_tokens", "3", "--top_k", "2", "--top_p", "0.5", "--no_encode_user"]
    old = ["--max-new-tokens", "3", "--top-k", "2", "--top-p", "0.5", "--no-encode-user"]
    for flags in (new, old):
        args = build_parser().parse_args(["--checkpoint", "ckpt", *flags])
        assert (args.max_new_tokens, args.top_k, args.top_p, args.encode_user) == (3, 2, 0.5, False)
    assert "--max-new-tokens is deprecated; use --max_new_tokens" in capsys.readouterr().err
    assert build_parser().parse_args(["--checkpoint", "ckpt"]).encode_user is None
    assert build_parser().parse_args(["--checkpoint", "ckpt", "--encode-user"]).encode_user is True


@pytest.mark.parametrize("script", ["chat.py", "web.py"])
def test_help_is_fast_and_loads_no_model(script):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", f"demo/{script}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--checkpoint" in done.stdout and "--max_new_tokens" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "demo" in imported and "torch" not in imported


def test_terminal_chat_end_to_end(checkpoint, images, answer, web):
    pexpect = _pip("pexpect", "pexpect")  # `web` only starts the web server early, to load beside this chat
    env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["demo/chat.py", "--checkpoint", str(checkpoint), *E2E],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 200),
    )
    try:
        child.expect("decoding: greedy, up to 12 new tokens")
        child.expect_exact("you> ")
        child.sendline(f"/image {images['red']}")
        child.expect(r"attached .*red.png \(32x32\)")
        child.expect_exact("you> ")
        child.sendline("/image /no/such/cat.png")
        child.expect_exact("error: /no/such/cat.png: image file not found")
        child.expect_exact("you> ")
        child.sendline(QUESTION)  # the red picture is still attached: the bad path did not disturb it
        child.expect_exact("metalm> ")
        child.expect_exact("you> ")
        assert ANSI.sub("", child.before).strip() == answer
        child.sendline(f"/image {images['notes']}")
        child.expect("error: .*notes.png: not an image PIL can read")
        child.expect_exact("you> ")
        child.sendline("   ")  # a blank line is ignored; the chat goes on
        child.sendline("/settings temperature=0")
        child.expect_exact("error: temperature = 0.0")
        child.sendline("/settings max_new_tokens=2")
        child.expect_exact("decoding: greedy, up to 2 new tokens")
        child.sendline("/reset")
        child.expect_exact("conversation and attached images cleared")
        child.sendline(f"/image {images['blue']}")
        child.expect_exact("attached")
        child.sendline(QUESTION)
        child.expect_exact("metalm> ")
        child.expect_exact("you> ")
        assert ANSI.sub("", child.before).strip() == "a blue"  # cut at 2 tokens
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_survives_unterminated_quotes_and_bytes_that_are_not_utf8(checkpoint, images, answer):
    lines = [b"\xff\xfe what is this", b"/image 'unterminated", b'/image "', f"/image {images['red']}".encode()]
    lines += [QUESTION.encode(), b"/quit"]
    stdin = io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"), encoding="utf-8")  # strict, like a terminal
    out = io.StringIO()
    assert chat_main(["--checkpoint", str(checkpoint), *E2E], stdin=stdin, stdout=out) == 0
    text = out.getvalue()
    assert "error: that line is not UTF-8 text (b'\\xff\\xfe what is this')" in text
    assert "error: /image 'unterminated: No closing quotation; expected a path" in text
    assert 'error: /image ": No closing quotation' in text
    assert f"metalm> {answer}" in text  # the chat went on and answered


def test_instructions_that_are_not_text_are_refused(engine):
    with pytest.raises(DemoError, match=r"the instruction is not valid text \('a\\udcff'\)"):
        Chat(engine, GREEDY).ask("a\udcff")  # a lone surrogate: what JSON's "\udcff" or a non-UTF-8 byte gives


class _WebServer:
    """``python demo/web.py`` on a free port, started at once so it loads while other tests run; ``url`` waits for
    the address it prints."""

    def __init__(self, checkpoint: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "demo/web.py", "--checkpoint", str(checkpoint), "--port", "0", *E2E],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._url: str | None = None
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:  # also keeps the pipe from filling up with request logs
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    @property
    def url(self) -> str:
        deadline = time.monotonic() + 120
        while self._url is None and time.monotonic() < deadline:
            try:
                found = re.search(r"serving the demo at (http://127\.0\.0\.1:\d+/)", self.lines.get(timeout=1))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self._url = found.group(1) if found else None
        if self._url is None:
            pytest.fail(f"demo/web.py did not start:\n{''.join(self.log)}")
        return self._url

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def web(checkpoint):
    server = _WebServer(checkpoint)
    yield server
    server.stop()


@pytest.fixture
def server(web) -> str:
    return web.url


def _post(url: str, body: dict) -> tuple[int, list[dict]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, [json.loads(line) for line in response]
    except urllib.error.HTTPError as err:
        return err.code, [json.loads(err.read())]


def test_web_api_streams_and_survives_bad_requests(server, engine, images, answer):
    info = json.loads(urllib.request.urlopen(server + "api/info", timeout=30).read())
    assert info["settings"]["greedy"] is True and info["settings"]["max_new_tokens"] == 12 and info["vision"]
    red = base64.b64encode(images["red"].read_bytes()).decode()
    ask = {"session": "api", "text": QUESTION, "image": red, "image_name": "red.png", "settings": {"greedy": "true"}}
    status, events = _post(server + "api/chat", ask)
    pieces = [e["text"] for e in events if "text" in e]
    assert status == 200 and len(pieces) > 1 and "".join(pieces) == events[-1]["done"]["answer"] == answer
    bad = {**ask, "image": base64.b64encode(images["truncated"].read_bytes()).decode(), "image_name": "x.png"}
    assert _post(server + "api/chat", bad)[0] == 400
    for body, message in [
        (bad, "x.png: not a readable image"),
        ({**ask, "text": " "}, "the instruction is empty"),
        ({**ask, "settings": {"top_p": "2"}}, "top_p = 2.0"),
        ({**ask, "session": "../"}, "session"),
        ({**ask, "image": "%%%"}, "image: not valid base64"),
    ]:
        status, events = _post(server + "api/chat", body)
        assert status == 400 and message in events[0]["error"]
    status, events = _post(server + "api/chat", {**ask, "text": "What colour is it?", "image": None})
    assert status == 200 and events[-1]["done"]["answer"] == _followup(engine, None)  # the session remembered


def _http(port: int, method: str, path: str, body: bytes = b"", **headers: str | None) -> bytes:
    """A request as raw bytes: Host, Content-Type (JSON) and Content-Length are this server's own unless given;
    a header given as None is left out."""
    fields = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(len(body))}
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    if method == "GET":
        fields = {name: value for name, value in fields.items() if name == "Host" or name in headers}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value is not None)
    return f"{method} {path} HTTP/1.0\r\n{head}\r\n".encode() + body


def _exchange(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` over a socket to 127.0.0.1, close the sending side, read the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return _parse(response)


def _parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return int(status.split()[1]), dict(line.split(": ", 1) for line in lines), body


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def test_web_body_limits_are_checked_before_reading(server):
    port = _port(server)
    reset = json.dumps({"session": "limits"}).encode()
    assert _exchange(port, _http(port, "POST", "/api/reset", reset))[0] == 200
    for length, status, message in [
        ("-1", 400, "Content-Length '-1': expected a whole number of bytes"),
        ("+16", 400, "Content-Length '+16'"),
        ("1_6", 400, "Content-Length '1_6'"),
        ("ten", 400, "Content-Length 'ten'"),
        (None, 411, "Content-Length: missing"),
        (str(MAX_BODY + 1), 413, "images are limited to 20 MB"),
        ("9" * 5000, 413, "images are limited to 20 MB"),
    ]:
        code, headers, body = _exchange(port, _http(port, "POST", "/api/reset", reset, Content_Length=length))
        assert (code, headers["Content-Type"]) == (status, "application/json") and message in json.loads(body)["error"]
    chunked = _http(port, "POST", "/api/reset", reset, Content_Length=None, Transfer_Encoding="chunked")
    assert _exchange(port, chunked)[0] == 411
    short = _http(port, "POST", "/api/reset", reset, Content_Length=str(len(reset) + 5))
    code, _, body = _exchange(port, short)
    assert code == 400 and "the request body ended after 21 of the 26 bytes" in json.loads(body)["error"]


def test_web_requires_json_from_this_server_own_address(server):
    port = _port(server)
    reset = json.dumps({"session": "origin"}).encode()
    for headers, status, message in [
        ({"Content_Type": "text/plain"}, 415, "Content-Type 'text/plain': expected application/json"),
        ({"Content_Type": None}, 415, "Content-Type '': expected application/json"),
        ({"Content_Type": "application/json; charset=utf-8"}, 200, None),
        ({"Host": "evil.example:80"}, 403, "Host 'evil.example:80': expected a loopback address"),
        ({"Host": f"127.0.0.1.evil.example:{port}"}, 403, "Host '127.0.0.1.evil.example:"),
        ({"Host": f"LOCALHOST:{port}"}, 200, None),
        ({"Host": f"[::1]:{port}"}, 200, None),
        ({"Origin": "http://evil.example"}, 403, "Origin 'http://evil.example': expected "),
        ({"Origin": "null"}, 403, "Origin 'null'"),
        ({"Origin": f"http://localhost:{port}"}, 200, None),
    ]:
        code, _, body = _exchange(port, _http(port, "POST", "/api/reset", reset, **headers))
        assert code == status and (message is None or message in json.loads(body)["error"])
    for body, kind, status in [(b"x" * (4 << 20), "text/plain", 415), (b"{" * (MAX_BODY + 1), "application/json", 413)]:
        with pytest.raises(urllib.error.HTTPError) as refused:  # the answer arrives, not a broken pipe
            urllib.request.urlopen(
                urllib.request.Request(server + "api/reset", body, {"Content-Type": kind}), timeout=60
            )
        assert refused.value.code == status
    rebound = _exchange(port, _http(port, "GET", "/api/info", Host=f"attacker.example:{port}"))
    assert rebound[0] == 403 and b"decoder" not in rebound[2]
    assert _exchange(port, _http(port, "GET", "/api/info"))[0] == 200
    text = json.dumps({"session": "origin", "text": "a\udcff"}).encode()  # JSON may carry a lone surrogate
    code, _, body = _exchange(port, _http(port, "POST", "/api/chat", text))
    assert code == 400 and "the instruction is not valid text" in json.loads(body)["error"]


def test_web_answers_40_parallel_requests_without_a_reset(server):
    port, results = _port(server), queue.Queue()

    def fetch() -> None:
        try:
            results.put(_exchange(port, _http(port, "GET", "/api/info"))[0])
        except OSError as err:
            results.put(repr(err))

    threads = [threading.Thread(target=fetch) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    got = [results.get(timeout=1) for _ in threads]
    assert got == [200] * 40, got  # before the fix: 21 of 40 were reset with backlog 5


@contextlib.contextmanager
def _in_process_servers(engine: Engine | None):
    """``start(**keywords)`` starts a DemoServer on 127.0.0.1 (any free port, which it returns) with these keywords;
    all stop on leaving."""
    running = []

    def start(**keywords) -> int:
        server = DemoServer(0, engine, GREEDY, **keywords)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.server_address[1]

    try:
        yield start
    finally:
        for server, thread in running:
            server.shutdown()
            server.server_close()
            thread.join(timeout=30)


@pytest.fixture
def local_server(engine):
    """Starts in-process servers with small limits (``start(**limits)`` gives the port)."""
    with _in_process_servers(engine) as start:
        yield start


def _read_all(sock: socket.socket) -> bytes:
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    return response


def test_web_drops_stalled_and_trickling_clients(local_server):
    port = local_server(read_timeout=0.5, body_seconds=1.5)
    body = json.dumps({"session": "stall"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(_http(port, "POST", "/api/reset", body)[:-5])  # the headers and part of the body, then nothing
        code, _, answer = _parse(_read_all(sock))
    assert (
        code == 408
        and f"the request body stalled: {len(body) - 5} of {len(body)} bytes arrived" in json.loads(answer)["error"]
    )
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /api/reset HTTP/1.0\r\nHost: ")  # stalls inside the headers: dropped, no answer
        assert _read_all(sock) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(_http(port, "POST", "/api/reset", body)[: -len(body)])
        for byte in body:  # one byte every 0.2 s: never silent for the read timeout, too slow for the body's time
            if select.select([sock], [], [], 0.2)[0]:
                break
            sock.sendall(bytes([byte]))
        code, _, answer = _parse(_read_all(sock))
    assert code == 408 and "the request body stalled" in json.loads(answer)["error"]


def test_web_bounds_its_threads_and_refuses_politely_when_full(local_server):
    port = local_server(workers=2, read_timeout=20, queue_wait=0.5)
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /api/info HTTP/1.0\r\n")  # both workers now wait for the rest of the headers
        code, headers, body = _exchange(port, _http(port, "GET", "/api/info"))
        assert (code, headers["Retry-After"]) == (503, "5") and "busy" in json.loads(body)["error"]
    finally:
        for sock in stalled:
            sock.close()
    codes = [_exchange(port, _http(port, "GET", "/api/info"))[0] for _ in range(3)]
    assert 200 in codes  # the workers came back once the stalled clients were gone


def _chromium():
    """Debian's chromium and chromedriver, installed with apt-get when missing (skips when that fails)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium and chromium-driver are missing, and installing them needs apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        if done.returncode:
            pytest.skip(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("apt-get installed chromium chromium-driver but chromium or chromedriver is not on PATH")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    _pip("selenium", "selenium")
    from demo.screenshot import browser as headless  # the page the README's screenshot tool drives

    assert (shutil.which("chromium"), shutil.which("chromedriver")) == (binary, driver_path)
    driver = headless("1100,720")
    yield driver
    driver.quit()


def test_web_page_in_headless_chromium(server, browser, engine, images, answer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert "decoder 2 layers x 32 wide" in browser.find_element(By.ID, "model").text
    assert browser.find_element(By.ID, "max_new_tokens").get_attribute("value") == "12"
    assert browser.find_element(By.ID, "greedy").is_selected()
    browser.execute_script("""window.seen = [];
        new MutationObserver((ms) => ms.forEach((m) => {
          const t = m.target.closest && m.target.closest(".turn.assistant .text");
          if (t) window.seen.push(t.textContent);
        })).observe(document.getElementById("conversation"), {childList: true, subtree: true, characterData: true});""")

    def ask(text: str, image: Path | None, done: int) -> None:
        if image is not None:
            browser.find_element(By.ID, "image").send_keys(str(image))
        box = browser.find_element(By.ID, "instruction")
        box.clear()
        box.send_keys(text)
        browser.find_element(By.ID, "send").click()
        if done:
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.turn.assistant[data-done="true"]')) == done)

    def error() -> str:
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        return browser.find_element(By.ID, "error").text

    ask(QUESTION, images["red"], done=1)
    texts = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .text")
    assert [t.text for t in texts] == [answer]
    seen = [s for s in browser.execute_script("return window.seen") if s]
    assert len(seen) > 1 and seen[-1] == answer and all(answer.startswith(s) for s in seen)  # it streamed in
    assert "(end of line); greedy, up to 12 new tokens" in browser.find_element(By.CSS_SELECTOR, ".stats").text
    shot = tmp_path / "web.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    if os.environ.get("METALM_UPDATE_SCREENSHOT"):  # refresh the committed one on request only: a test run
        (ROOT / "demo" / "screenshots").mkdir(exist_ok=True)  # should not dirty the work tree
        shutil.copyfile(shot, ROOT / "demo" / "screenshots" / "web.png")

    ask(QUESTION, images["truncated"], done=0)
    assert "truncated.png: not a readable image" in error()
    ask("", None, done=0)
    assert "the instruction is empty" in error()
    browser.find_element(By.ID, "temperature").clear()
    browser.find_element(By.ID, "greedy").click()  # sampling now, with temperature blank: refused, clearly
    ask("What colour is it?", None, done=0)
    assert "temperature = '': expected a number" in error()
    browser.find_element(By.ID, "temperature").send_keys("0.7")
    browser.find_element(By.ID, "greedy").click()
    ask("What colour is it?", images["blue"], done=2)  # the server kept serving
    assert browser.find_element(By.ID, "error").text == ""
    texts = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .text")]
    assert texts == [answer, _followup(engine, BLUE)]


@pytest.fixture
def host_server():
    """In-process servers for the Host and Origin checks (``start(allow_hosts=...)``), which answer before any model
    call: no engine (``POST /api/reset`` and ``GET /`` need none)."""
    with _in_process_servers(None) as start:
        yield start


def _reset(port: int, host: str | None, origin: str | None = None, skip_host: bool = False) -> tuple[int, str]:
    """``POST /api/reset`` over http.client (HTTP/1.1) with the given Host (None: http.client's own) and Origin;
    ``skip_host`` sends no Host at all. Returns the status and the error message ("" on success)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"session": "hosts"}).encode()
    try:
        conn.putrequest("POST", "/api/reset", skip_host=skip_host or host is not None)
        for name, value in (("Host", host), ("Origin", origin)):
            if value is not None:
                conn.putheader(name, value)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read()).get("error", "")
    finally:
        conn.close()


def test_web_host_check_allows_loopback_on_any_port_and_refuses_other_names(host_server):
    """An SSH port-forward (the browser at localhost:OTHERPORT) works; DNS-rebinding names stay refused; HTTP/1.1
    requires Host (400 without), HTTP/1.0 does not."""
    port = host_server()
    assert _reset(port, None) == (200, "")  # http.client's own Host: 127.0.0.1:PORT
    for host in ["localhost:9000", "LOCALHOST", "127.0.0.2:1", "[::1]:65535", f"localhost:{port}"]:
        assert _reset(port, host) == (200, ""), host
    for host in ["evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io:80"]:
        status, error = _reset(port, host)
        assert status == 403 and f"Host {host!r}: expected a loopback address" in error, host
    for host in ["localhost:0", "localhost:70000", "local host", "[::1"]:
        assert _reset(port, host)[0] == 403, host
    status, error = _reset(port, None, skip_host=True)
    assert status == 400 and "Host: missing; HTTP/1.1 requires it" in error
    assert _exchange(port, _http(port, "POST", "/api/reset", b'{"session": "h"}', Host=None))[0] == 200  # HTTP/1.0
    two = _http(port, "POST", "/api/reset", b'{"session": "h"}').replace(b"Host:", b"Host: localhost\r\nHost:", 1)
    code, _, body = _exchange(port, two)
    assert code == 400 and "Host: 2 headers" in json.loads(body)["error"]


def test_web_origin_must_be_the_page_the_host_serves(host_server):
    port = host_server()
    for host, origin, status in [
        ("localhost:9000", "http://localhost:9000", 200),  # the page through a port-forward
        (f"127.0.0.1:{port}", f"http://localhost:{port}", 200),  # this server under another loopback name
        (f"localhost:{port}", "http://localhost:3000", 403),  # another local server's page
        (f"localhost:{port}", "http://evil.example", 403),
        (f"localhost:{port}", "null", 403),
    ]:
        got, error = _reset(port, host, origin)
        assert got == status and (status == 200 or f"Origin {origin!r}: expected this page's own" in error), origin


def test_web_allow_host_admits_the_names_given_and_no_others(host_server, capsys):
    port = host_server(allow_hosts=("Demo.Example", "proxy.internal:8443"))
    for host in ["demo.example", "demo.example:8080", "proxy.internal:8443", "localhost:1234"]:
        assert _reset(port, host) == (200, ""), host
    for host in ["proxy.internal", "proxy.internal:80", "evil.example"]:
        status, error = _reset(port, host)
        assert status == 403 and "or demo.example, proxy.internal:8443" in error, host
    assert _reset(port, f"127.0.0.1:{port}", origin="https://demo.example")[0] == 200  # a proxy that rewrites Host
    assert _reset(port, "demo.example", origin="https://evil.example")[0] == 403
    with pytest.raises(ValueError, match="not host names"):
        DemoServer(0, None, GREEDY, allow_hosts=["bad name"])
    args = web_parser().parse_args(["--checkpoint", "c", "--allow_host", "a.example", "--allow_host", "b:1"])
    assert args.allow_host == ["a.example", "b:1"]
    with pytest.raises(SystemExit):  # refused before any model is loaded
        web_main(["--checkpoint", "nowhere", "--allow_host", "bad name"])
    assert "--allow_host 'bad name': expected a host name" in capsys.readouterr().err
