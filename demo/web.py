"""A web page for the demo: upload an image, type an instruction, watch the answer stream in.

    python demo/web.py --checkpoint runs/tiny/final --port 7860    # then open http://127.0.0.1:7860

A small server of our own (the standard library's ThreadingHTTPServer, one HTML page, ``fetch`` reading a streamed
response of JSON lines) rather than Gradio: Gradio is a large install (FastAPI, uvicorn, pandas, its front end)
for one page, and by default it reports usage to api.gradio.app and checks for newer versions there unless
GRADIO_ANALYTICS_ENABLED=False. This server adds no dependency, makes no outside request, starts as soon as the
model is loaded, and is all here to read. It listens on 127.0.0.1 only.

``GET /`` is the page; ``GET /api/info`` the model and limits; ``POST /api/chat`` takes
``{"session", "text", "image" (base64 or null), "image_name", "settings"}`` and answers either 400 with
``{"error": message}`` (a bad image, an empty or overlong instruction, a bad setting) or 200 with one JSON object
per line: ``{"notice"}``, ``{"text"}`` pieces, then ``{"done"}`` or ``{"error"}``. ``POST /api/reset`` forgets a
session's conversation. Each page keeps its own conversation (by a random session id); model calls are serialized
by the engine's lock, and a failing request never stops the server.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import sys
import threading
import traceback
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: import from the repository root, not from demo/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from demo import MAX_IMAGE_BYTES, DemoError, Settings, add_model_args, parse_settings, settings_from_args  # noqa: E402
from eval.flags import FlagParser  # noqa: E402

if TYPE_CHECKING:
    from demo.engine import Chat, Engine

PAGE = Path(__file__).with_name("web.html")
HOST = "127.0.0.1"
MAX_BODY = MAX_IMAGE_BYTES * 4 // 3 + (1 << 20)  # a base64 image at the size limit plus the instruction
MAX_SESSIONS = 32  # conversations kept; the least recently used is forgotten first
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class DemoServer(ThreadingHTTPServer):
    """The HTTP server plus what its handlers share: the engine, the default settings and the conversations."""

    daemon_threads = True

    def __init__(self, port: int, engine: Engine, settings: Settings) -> None:
        super().__init__((HOST, port), Handler)
        self.engine = engine
        self.settings = settings
        self.page = PAGE.read_bytes()
        self.sessions: OrderedDict[str, Chat] = OrderedDict()
        self.sessions_lock = threading.Lock()

    def chat(self, session: str) -> Chat:
        """The session's conversation, created on first use; old sessions beyond ``MAX_SESSIONS`` are dropped."""
        from demo.engine import Chat  # lazy like main's import: a fast --help

        with self.sessions_lock:
            chat = self.sessions.pop(session, None) or Chat(self.engine, self.settings)
            self.sessions[session] = chat
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
            return chat


class Handler(BaseHTTPRequestHandler):
    """One request. HTTP/1.0: the connection closes after each response, which ends a streamed answer."""

    server: DemoServer
    server_version = "MetaLMDemo/0.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            info = {**self.server.engine.info(), "settings": dataclasses.asdict(self.server.settings)}
            self._json(HTTPStatus.OK, info)
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{path}: no such page"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/api/chat":
                self._chat()
            elif path == "/api/reset":
                self.server.chat(_session(self._read_json())).reset()
                self._json(HTTPStatus.OK, {"ok": True})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"{path}: no such endpoint"})
        except DemoError as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away; nothing to answer
        except Exception as err:  # a bug must not take the server down: report it and keep serving
            traceback.print_exc()
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(err).__name__}: {err}"})

    def _chat(self) -> None:
        from demo.engine import load_image  # lazy like main's import: a fast --help

        request = self._read_json()
        chat = self.server.chat(_session(request))
        settings = request.get("settings") or {}
        if not isinstance(settings, dict):
            raise DemoError("settings: expected an object of name: value")
        text = request.get("text")
        if not isinstance(text, str):
            raise DemoError("text: expected the instruction as a string")
        if not text.strip():
            raise DemoError("the instruction is empty: type what the model should do, e.g. 'describe the picture'")
        settings = parse_settings(settings, self.server.settings)
        images = []
        data = _image_bytes(request.get("image"))
        if data is not None:
            name = request.get("image_name")
            images.append(load_image(data, name if isinstance(name, str) and name else "the uploaded image"))
        chat.settings = settings
        stream = _LineStream(self)
        try:
            reply = chat.ask(
                text,
                images,
                on_text=lambda piece: stream.send({"text": piece}),
                on_notice=lambda message: stream.send({"notice": message}),
            )
        except DemoError as err:
            if not stream.started:
                raise
            stream.send({"error": str(err)})
            return
        except (BrokenPipeError, ConnectionResetError):
            raise  # the page went away mid-answer: generation stopped, nothing left to tell it
        except Exception as err:
            if not stream.started:
                raise
            traceback.print_exc()
            stream.send({"error": f"internal error: {type(err).__name__}: {err}"})
            return
        done = {
            "answer": reply.text,
            "finish_reason": reply.finish_reason,
            "prompt_tokens": reply.prompt_tokens,
            "new_tokens": len(reply.token_ids),
            "seconds": round(reply.seconds, 3),
            "dropped_turns": reply.dropped_turns,
            "settings": settings.describe(),
        }
        stream.send({"done": done})

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise DemoError("Content-Length: expected a number of bytes") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise DemoError(f"the request is {length / 2**20:.1f} MB; images are limited to {MAX_IMAGE_BYTES >> 20} MB")
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise DemoError(f"the request body is not JSON ({err})") from None
        if not isinstance(data, dict):
            raise DemoError("the request body: expected a JSON object")
        return data

    def _json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class _LineStream:
    """The 200 response of a chat request, begun at its first line, so errors before any output can still be
    answered with a 400 and the page shows them the same way."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.started = False

    def send(self, event: dict) -> None:
        h = self.handler
        if not self.started:
            h.send_response(HTTPStatus.OK)
            h.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
            h.send_header("Cache-Control", "no-store")
            h.send_header("X-Content-Type-Options", "nosniff")
            h.end_headers()
            self.started = True
        h.wfile.write(json.dumps(event).encode() + b"\n")
        h.wfile.flush()


def _session(request: dict[str, Any]) -> str:
    session = request.get("session")
    if not isinstance(session, str) or not SESSION_ID.fullmatch(session):
        raise DemoError("session: expected an id of 1 to 64 letters, digits, '-' or '_'")
    return session


def _image_bytes(value: object) -> bytes | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise DemoError("image: expected the file's bytes in base64")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DemoError(f"image: not valid base64 ({err})") from None


def build_parser() -> FlagParser:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (0: any free port; default 7860)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint, then serve until Ctrl-C; prints the page's address once it is ready."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    print(f"loading {args.checkpoint} ...", flush=True)
    # demo.engine imports torch: imported here, not at the top, so --help answers in 0.1 s instead of seconds
    from demo.engine import load_checkpoint

    try:
        engine = load_checkpoint(args.checkpoint, args.preset, args.device, args.encode_user)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server = DemoServer(args.port, engine, settings)
    except OSError as err:
        print(f"error: cannot listen on {HOST}:{args.port} ({err})", file=sys.stderr)
        return 2
    print(engine.describe())
    print(f"decoding: {settings.describe()} (editable on the page)")
    print(f"serving the demo at http://{HOST}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
