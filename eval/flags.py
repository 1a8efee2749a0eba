"""One flag spelling for every entry point: words joined by underscores (``--max_steps``, ``--encode_input``).

Training flags are dataclass field names, so underscores are the spelling; evaluation and the demo follow it. The
hyphenated spelling of a known flag (``--encode-input``) still parses, with a deprecation message on stderr, so
older command lines keep working. Only the standard library is imported, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def canonical_argv(argv: Sequence[str], known: set[str], prog: str = "") -> list[str]:
    """``argv`` with each deprecated ``--a-b`` (or ``--a-b=value``) of a known ``--a_b`` rewritten, and a message
    on stderr for each; other arguments (values, unknown flags) pass through unchanged."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and "-" in flag[2:] and flag not in known:
            canonical = "--" + flag[2:].replace("-", "_")
            if canonical in known:
                print(f"{prog or 'warning'}: {flag} is deprecated; use {canonical}", file=sys.stderr)
                arg = canonical + eq + value
        out.append(arg)
    return out


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that also accepts the deprecated hyphenated spelling of its underscore flags."""

    def parse_known_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        known = {opt for action in self._actions for opt in action.option_strings}
        return super().parse_known_args(canonical_argv(argv, known, self.prog), namespace)
