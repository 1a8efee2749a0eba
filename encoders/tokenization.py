"""An encoder's own tokenizer: the one a pretrained text encoder (BERT, MiniLM, ELECTRA, ...) was trained with.

When a text encoder does not share the decoder's tokenizer, the text it reads is tokenized here, with the encoder's
own special tokens (``[CLS] ... [SEP]``), and the encoder's output vectors take as many decoder positions as it
returns (see ``data.layout``). Ids carry the name of the tokenizer that made them (``Dock.tokenizer``), so feeding
an encoder ids from another tokenizer is an error naming both, never a silent mismatch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

FILENAME = "tokenizer.json"
DECODER_TOKENIZER = "decoder"  # the tokenizer name of ids made by the decoder's own tokenizer


class TextTokenizer:
    """Text -> ids of one encoder's tokenizer (a Hugging Face fast tokenizer's ``tokenizer.json``), with the
    special tokens its post-processor adds. ``name`` says which tokenizer it is (in errors); ``fingerprint`` is
    a hash of its definition, so two copies of the same tokenizer compare equal wherever they were loaded from."""

    def __init__(self, backend: _HFTokenizer, name: str) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.name = name
        self.fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        pad = next((t for t in ("[PAD]", "<pad>", "<PAD>") if backend.token_to_id(t) is not None), None)
        self.pad_id = backend.token_to_id(pad) if pad is not None else 0

    @classmethod
    def load(cls, path: str | os.PathLike, name: str | None = None) -> TextTokenizer:
        """From a directory holding ``tokenizer.json`` or that file; ``name`` defaults to the directory's name."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"{path}: no encoder tokenizer there; expected a directory holding {FILENAME} (a Hugging Face "
                "fast tokenizer)"
            )
        try:
            backend = _HFTokenizer.from_file(str(file))
        except Exception as err:  # the Rust backend raises a bare Exception for a malformed file
            raise ValueError(f"{file}: not a tokenizers JSON file ({FILENAME} of a fast tokenizer): {err}") from err
        return cls(backend, name or file.parent.name)

    def describe(self) -> str:
        """How errors name this tokenizer: its name, size and fingerprint."""
        return f"{self.name!r} ({self.vocab_size} tokens, fingerprint {self.fingerprint})"

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Ids of ``text`` with the tokenizer's special tokens; at most ``max_len`` (the last special kept)."""
        ids = self.backend.encode(text).ids
        if max_len is not None and len(ids) > max_len:
            ids = ids[: max_len - 1] + ids[-1:]
        return ids

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> list[list[int]]:
        """``encode`` over many texts (parallel in the Rust backend)."""
        out = [e.ids for e in self.backend.encode_batch(list(texts))]
        if max_len is not None:
            out = [ids[: max_len - 1] + ids[-1:] if len(ids) > max_len else ids for ids in out]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into ``directory`` atomically; returns the file."""
        return save_tokenizer_json(self.backend, directory)


def save_tokenizer_json(backend: _HFTokenizer, directory: str | os.PathLike) -> Path:
    """Write ``backend`` as ``directory/tokenizer.json`` atomically (temp file + rename); returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / FILENAME
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(backend.to_str(pretty=True))
        os.replace(tmp, file)
    except BaseException:
        os.unlink(tmp)
        raise
    return file
