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

What a request must be, checked before its body is read: a Host header naming a loopback address (localhost,
127.0.0.0/8 or [::1], on any port, so an SSH port-forward to another local port works) or a name given with
``--allow_host``, and no Origin but the page's own, else 403, so neither another site's page nor a rebound DNS name
can drive the model (a request without Host is let through only in HTTP/1.0, which does not require it; 400 in
HTTP/1.1); a POST with ``Content-Type: application/json`` (415), a plain
Content-Length (400, 411 when missing) of at most ``MAX_BODY`` bytes (413). A client silent for ``READ_TIMEOUT``
seconds, or whose body takes over ``BODY_SECONDS``, is dropped (408). At most ``MAX_WORKERS`` requests are served
at once; the next waits in line up to ``QUEUE_WAIT`` seconds (later ones in a listen queue of
``request_queue_size``) and is then answered 503 with Retry-After, never reset.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterable
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
MAX_WORKERS = 16  # requests served at once; model calls queue on the engine's lock anyway
QUEUE_WAIT = 5.0  # seconds a connection waits for a free worker before it is answered 503
RETRY_AFTER = 5  # seconds, in that 503's Retry-After
READ_TIMEOUT = 20.0  # seconds a client may stay silent while sending its request
BODY_SECONDS = 120.0  # for the whole body: a 27 MB upload at 1 MB/s fits, a client trickling bytes does not
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 << 20  # what a refused client may still send, dropped, before the close
GONE = (BrokenPipeError, ConnectionResetError, TimeoutError)  # the page stopped reading: nothing to answer
HOST_VALUE = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?")  # name or [IPv6], then an optional port


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's (or an Origin's) ``name[:port]`` as (lower-case name, port or None); None when it is not
    one (bad characters, a port outside 1..65535)."""
    found = HOST_VALUE.fullmatch(value.strip().lower())
    if found is None:
        return None
    port = int(found.group(2)) if found.group(2) else None
    return None if port is not None and not 0 < port < 65536 else (found.group(1), port)


def is_loopback(name: str) -> bool:
    """Whether a host name is this machine by definition: ``localhost``, 127.0.0.0/8 or ``[::1]`` (never a DNS name
    that resolves there: that is what a DNS-rebinding page uses)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


class DemoServer(ThreadingHTTPServer):
    """The HTTP server plus what its handlers share: the engine, the default settings, the conversations, the
    addresses a request may name and the limits on clients (the keywords, for tests)."""

    daemon_threads = True
    request_queue_size = 128  # connections waiting to be accepted; the default 5 reset bursts of requests

    def __init__(
        self,
        port: int,
        engine: Engine,
        settings: Settings,
        *,
        workers: int = MAX_WORKERS,
        queue_wait: float = QUEUE_WAIT,
        read_timeout: float = READ_TIMEOUT,
        body_seconds: float = BODY_SECONDS,
        allow_hosts: Iterable[str] = (),
    ) -> None:
        """``allow_hosts``: other names a request may give as its Host (``NAME`` on any port, or ``NAME:PORT``),
        e.g. the name a reverse proxy serves the demo under; loopback addresses are always allowed."""
        allowed = {host.strip().lower() for host in allow_hosts}
        bad = sorted(host for host in allowed if split_host(host) is None)
        if bad:
            raise ValueError(f"allow_hosts: {bad} are not host names (NAME or NAME:PORT)")
        super().__init__((HOST, port), Handler)
        self.engine = engine
        self.settings = settings
        self.page = PAGE.read_bytes()
        self.sessions: OrderedDict[str, Chat] = OrderedDict()
        self.sessions_lock = threading.Lock()
        self.workers, self.queue_wait = workers, queue_wait
        self.read_timeout, self.body_seconds = read_timeout, body_seconds
        self.slots = threading.BoundedSemaphore(workers)
        self.allow_hosts = allowed

    def host_allowed(self, host: str) -> bool:
        """Whether a request may name ``host`` (a Host header's value): a loopback address on any port, or an
        ``allow_hosts`` name (on any port, or on the port it was given with)."""
        parsed = split_host(host)
        if parsed is None:
            return False
        return is_loopback(parsed[0]) or parsed[0] in self.allow_hosts or host.strip().lower() in self.allow_hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a page at ``origin`` may drive the model: the page this request's ``host`` serves (or the same
        loopback port under another loopback name), or an ``allow_hosts`` name (a proxy may rewrite the Host)."""
        scheme, sep, rest = origin.strip().lower().partition("://")
        parsed = split_host(rest)
        if scheme not in ("http", "https") or not sep or parsed is None:
            return False
        if parsed[0] in self.allow_hosts or rest in self.allow_hosts:
            return True
        if host is None:
            return is_loopback(parsed[0])
        ours = split_host(host)
        return rest == host or (is_loopback(parsed[0]) and is_loopback(ours[0]) and parsed[1] == ours[1])

    def expected_hosts(self) -> str:
        names = ", ".join(sorted(self.allow_hosts))
        return "a loopback address (localhost, 127.0.0.1 or [::1], any port)" + (f" or {names}" if names else "")

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve on a thread of its own once one of the ``workers`` is free, waiting up to ``queue_wait`` seconds
        (the connections behind wait in the listen queue); past that, answer 503 with Retry-After."""
        if not self.slots.acquire(timeout=self.queue_wait):
            self._busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _busy(self, request: socket.socket) -> None:
        body = json.dumps({"error": f"the demo is busy with {self.workers} requests; try again in a few seconds"})
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER}\r\nCache-Control: no-store\r\n\r\n"
        )
        try:  # first take what the client sent: closing a socket with unread data resets the connection
            request.setblocking(False)
            for _ in range(16):
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass  # nothing (more) to read yet
        try:
            request.settimeout(1)
            request.sendall(head.encode() + body.encode())
        except OSError:
            pass  # the client left or does not read; it is dropped all the same
        self.shutdown_request(request)

    def chat(self, session: str) -> Chat:
        """The session's conversation, created on first use; old sessions beyond ``MAX_SESSIONS`` are dropped."""
        from demo.engine import Chat  # lazy like main's import: a fast --help

        with self.sessions_lock:
            chat = self.sessions.pop(session, None) or Chat(self.engine, self.settings)
            self.sessions[session] = chat
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
            return chat


class Refused(Exception):
    """A request refused before its body is read (or while it is), with the HTTP status that says why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    """One request. HTTP/1.0: the connection closes after each response, which ends a streamed answer."""

    server: DemoServer
    server_version = "MetaLMDemo/0.1"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # the socket's timeout: a silent client is dropped
        super().setup()

    def do_GET(self) -> None:
        try:
            self._check_caller()
        except Refused as err:
            self._refuse(err)
            return
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
            self._check_caller()
            if path == "/api/chat":
                self._chat()
            elif path == "/api/reset":
                self.server.chat(_session(self._read_json())).reset()
                self._json(HTTPStatus.OK, {"ok": True})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"{path}: no such endpoint"})
        except Refused as err:
            self._refuse(err)
        except DemoError as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except GONE:
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
        except GONE:
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

    def _check_caller(self) -> None:
        """Refuse (403) a request whose Host is not a loopback address or an allowed name, or that comes from
        another site's page: a page elsewhere, or one whose DNS name was rebound to 127.0.0.1, must not drive the
        model. No Host (400) is let through only in HTTP/1.0, the one version that does not require it."""
        hosts = [h for h in self.headers.get_all("Host") or [] if h.strip()]
        if len(hosts) > 1:
            raise Refused(HTTPStatus.BAD_REQUEST, f"Host: {len(hosts)} headers ({', '.join(hosts)}); expected one")
        if not hosts and self.request_version != "HTTP/1.0":
            raise Refused(HTTPStatus.BAD_REQUEST, f"Host: missing; {self.request_version} requires it")
        host = hosts[0].strip().lower() if hosts else None
        if host is not None and not self.server.host_allowed(host):
            raise Refused(HTTPStatus.FORBIDDEN, f"Host {hosts[0]!r}: expected {self.server.expected_hosts()}")
        origin = self.headers.get("Origin")
        if origin is not None and not self.server.origin_allowed(origin, host):
            page = f"http://{host}" if host else "a loopback page"
            raise Refused(HTTPStatus.FORBIDDEN, f"Origin {origin!r}: expected this page's own ({page})")

    def _body_length(self) -> int:
        """The body's size from a POST's headers, refused before anything is read unless the body is JSON (415) of
        a plain, single Content-Length (400; 411 when missing or chunked) of at most ``MAX_BODY`` bytes (413)."""
        kind = self.headers.get("Content-Type", "")
        if self.headers.get_content_type() != "application/json":  # text/plain when missing
            raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {kind!r}: expected application/json")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths or "Transfer-Encoding" in self.headers:
            raise Refused(
                HTTPStatus.LENGTH_REQUIRED,
                "Content-Length: missing; expected the body's size in bytes (chunked bodies are not accepted)",
            )
        text = lengths[0].strip()
        if len(lengths) > 1 or not (text.isascii() and text.isdigit()):  # int() would take "-1", "+5", "1_0"
            raise Refused(
                HTTPStatus.BAD_REQUEST, f"Content-Length {', '.join(lengths)!r}: expected a whole number of bytes"
            )
        if len(text) > 15 or int(text) > MAX_BODY:  # int() refuses over 4300 digits
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"Content-Length {text[:20]}{'...' * (len(text) > 20)}: over the {MAX_BODY / 2**20:.1f} MB a "
                f"request may have; images are limited to {MAX_IMAGE_BYTES >> 20} MB",
            )
        return int(text)

    def _read_body(self, length: int) -> bytes:
        """The body, read piece by piece against ``body_seconds``: a client that stalls (each read times out) or
        trickles bytes is answered 408 and dropped instead of holding a worker."""
        deadline, parts, got = time.monotonic() + self.server.body_seconds, [], 0
        try:
            while got < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(self.server.read_timeout, left))
                part = self.rfile.read1(length - got)
                if not part:
                    raise Refused(
                        HTTPStatus.BAD_REQUEST,
                        f"the request body ended after {got} of the {length} bytes its Content-Length announced",
                    )
                parts.append(part)
                got += len(part)
        except TimeoutError:
            raise Refused(
                HTTPStatus.REQUEST_TIMEOUT, f"the request body stalled: {got} of {length} bytes arrived"
            ) from None
        finally:
            self.connection.settimeout(self.server.read_timeout)
        return b"".join(parts)

    def _read_json(self) -> dict[str, Any]:
        body = self._read_body(self._body_length())
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise DemoError(f"the request body is not JSON ({err})") from None
        if not isinstance(data, dict):
            raise DemoError("the request body: expected a JSON object")
        return data

    def _refuse(self, err: Refused) -> None:
        self.close_connection = True
        try:
            self._json(err.status, {"error": str(err)})
            self._linger()
        except OSError:
            pass  # the client left or stalls; the connection closes all the same

    def _linger(self) -> None:
        """Read and drop the body a refused client is still sending (a bounded amount, for a bounded time):
        closing with unread data resets the connection, and the client would lose the answer."""
        self.connection.shutdown(socket.SHUT_WR)
        deadline, dropped = time.monotonic() + LINGER_SECONDS, 0
        while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            self.connection.settimeout(left)
            piece = self.connection.recv(1 << 16)
            if not piece:
                return
            dropped += len(piece)

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
    p.add_argument(
        "--allow_host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name requests may give as their Host, e.g. the one a reverse proxy serves the demo under "
        "(NAME on any port or NAME:PORT; repeatable). Loopback addresses on any port are always allowed; other "
        "names are refused so that a DNS-rebinding page cannot drive the model",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint, then serve until Ctrl-C; prints the page's address once it is ready."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    for host in args.allow_host:
        if split_host(host) is None:
            parser.error(f"--allow_host {host!r}: expected a host name, NAME or NAME:PORT")
    print(f"loading {args.checkpoint} ...", flush=True)
    # demo.engine imports torch: imported here, not at the top, so --help answers in 0.1 s instead of seconds
    from demo.engine import load_checkpoint

    try:
        engine = load_checkpoint(args.checkpoint, args.preset, args.device, args.encode_user)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server = DemoServer(args.port, engine, settings, allow_hosts=args.allow_host)
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
