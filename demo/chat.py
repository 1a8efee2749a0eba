"""Terminal chat with a MetaLM checkpoint: attach images, give instructions, read each answer as it is written.

    python demo/chat.py --checkpoint runs/tiny/final --image data/world/images/val/000001.png

In the chat, a line is an instruction unless it is a command: /image PATH attaches an image to the next
instruction, /settings [name=value ...] shows or changes decoding, /reset starts over, /help, /quit. Errors (a bad
image, an empty or overlong instruction, a bad setting) are printed and the chat goes on; Ctrl-C stops an answer.
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if __package__ in (None, ""):  # run as a script: import from the repository root, not from demo/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from demo import DemoError, add_model_args, parse_settings, settings_from_args  # noqa: E402
from eval.flags import FlagParser  # noqa: E402

if TYPE_CHECKING:
    from demo.engine import Chat

PROMPT, ANSWER = "you> ", "metalm> "
HELP = """commands:
  /image PATH               attach an image to your next instruction (several may be attached)
  /settings [name=value ..] show the decoding settings, or change them, e.g. /settings temperature=0.5 greedy=true
                            (names: max_new_tokens greedy temperature top_k top_p seed)
  /reset                    forget the conversation and attached images
  /help                     this list
  /quit                     leave (also Ctrl-D)
anything else is an instruction for the model."""


def build_parser() -> FlagParser:
    p = FlagParser(
        description=__doc__.split("\n\n")[0], epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="attach an image to the first instruction (repeat for several)",
    )
    return p


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the chat until /quit or end of input; returns the exit status (2: the checkpoint or an image failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    stdin, out = stdin or sys.stdin, stdout or sys.stdout
    if isinstance(stdin, io.TextIOWrapper):  # bytes that are not text arrive as surrogates, refused line by line
        stdin.reconfigure(errors="surrogateescape")
    print(f"loading {args.checkpoint} ...", file=out, flush=True)
    # demo.engine imports torch: imported here, not at the top, so --help answers in 0.1 s instead of seconds
    from demo.engine import Chat, load_checkpoint

    try:
        engine = load_checkpoint(args.checkpoint, args.preset, args.device, args.encode_user)
        chat = Chat(engine, settings)
        for image in args.image:
            chat.attach(image)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(engine.describe(), file=out)
    print(f"decoding: {chat.settings.describe()}", file=out)
    if chat.pending:
        print(f"{len(chat.pending)} image(s) attached to your first instruction", file=out)
    print("type an instruction, or /help for commands", file=out, flush=True)
    if stdin.isatty():
        import readline  # noqa: F401  line editing and history for input()
    while True:
        try:
            line = _read_line(stdin, out)
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        try:
            _check_text(line)
            if line.startswith("/"):
                _command(chat, line.strip(), out)
            elif line.strip():
                _answer(chat, line, out)
        except DemoError as err:
            print(f"error: {err}", file=out, flush=True)


def _read_line(stdin: TextIO, out: TextIO) -> str:
    if stdin is sys.stdin and out is sys.stdout:
        return input(PROMPT)
    out.write(PROMPT)
    out.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _check_text(line: str) -> None:
    """Refuse a line holding bytes that were not text in the terminal's encoding (read as surrogates)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raw = line.encode("utf-8", "surrogateescape")
        raise DemoError(f"that line is not UTF-8 text ({raw[:60]!r}); type it again as text") from None


def _answer(chat: Chat, text: str, out: TextIO) -> None:
    def notice(message: str) -> None:
        print(f"[note] {message}", file=out, flush=True)

    def piece(text: str) -> None:
        out.write(text)
        out.flush()

    out.write(ANSWER)
    out.flush()
    try:
        reply = chat.ask(text, on_text=piece, on_notice=notice)
    except KeyboardInterrupt:
        print("\n[stopped; the instruction was not added to the conversation]", file=out, flush=True)
        return
    except DemoError:
        out.write("\n")
        raise
    if not reply.text:
        out.write("(empty answer)")
    out.write("\n")
    out.flush()


def _command(chat: Chat, line: str, out: TextIO) -> None:
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name == "/image":
        if not rest:
            raise DemoError("/image needs a path, e.g. /image data/world/images/val/000001.png")
        try:
            path = shlex.split(rest)[0] if rest[0] in "'\"" else rest
        except ValueError as err:  # an unterminated quote
            raise DemoError(f"/image {rest}: {err}; expected a path, in quotes if it holds spaces") from None
        image = chat.attach(path)
        print(
            f"attached {path} ({image.width}x{image.height}); {len(chat.pending)} image(s) wait for your next "
            "instruction",
            file=out,
            flush=True,
        )
    elif name == "/settings":
        if rest:
            changes = {}
            for item in rest.split():
                key, eq, value = item.partition("=")
                if not eq:
                    raise DemoError(f"/settings {item!r}: expected name=value, e.g. temperature=0.5")
                changes[key.strip().replace("-", "_")] = value
            chat.settings = parse_settings(changes, chat.settings)
        print(f"decoding: {chat.settings.describe()}", file=out, flush=True)
    elif name == "/reset":
        chat.reset()
        print("conversation and attached images cleared", file=out, flush=True)
    elif name == "/help":
        print(HELP, file=out, flush=True)
    else:
        raise DemoError(f"unknown command {name!r}; /help lists the commands")


if __name__ == "__main__":
    sys.exit(main())
