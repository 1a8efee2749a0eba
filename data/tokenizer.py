"""The decoder's tokenizer: a byte-level BPE (lossless on any string) with MetaLM's special tokens at fixed ids.

It wraps ``tokenizers.Tokenizer`` so the same class also loads any Hugging Face fast tokenizer directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from encoders.tokenization import save_tokenizer_json

PAD, EOS, PAR, IMAGE_START, IMAGE_END, VEC = "<pad>", "</s>", "</p>", "<image>", "</image>", "<vec>"
SPECIAL_TOKENS = (PAD, EOS, PAR, IMAGE_START, IMAGE_END, VEC)
FILENAME = "tokenizer.json"


class Tokenizer:
    """Text <-> decoder ids. Special-token strings inside text are encoded as plain text, never as specials."""

    def __init__(self, backend: _HFTokenizer):
        backend.add_special_tokens(list(SPECIAL_TOKENS))  # a no-op for ours; appended to a foreign vocabulary
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True
        self.backend = backend
        self._ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
        self._vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
        """A byte-level BPE of ``vocab_size`` ids in all (specials at 0..5 first); same texts, same tokenizer."""
        if vocab_size < len(SPECIAL_TOKENS) + 256:
            raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} (specials + 256 bytes)")
        backend = _HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """From a directory holding ``tokenizer.json`` (ours or any Hugging Face fast tokenizer's), or that file."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}: expected a directory holding {FILENAME}")
        try:
            backend = _HFTokenizer.from_file(str(file))
        except Exception as e:
            raise ValueError(f"{file} is not a valid tokenizers JSON file ({FILENAME} of a fast tokenizer): {e}") from e
        return cls(backend)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into ``directory`` atomically (temp file + rename); returns the file."""
        return save_tokenizer_json(self.backend, directory)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over many texts at once (parallel in the Rust backend)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special`` is False."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    @property
    def added_tokens(self) -> frozenset[str]:
        """The special tokens of the vocabulary: ours, and a pretrained tokenizer's own (``<|im_start|>``, ...)."""
        return frozenset(t.content for t in self.backend.get_added_tokens_decoder().values())

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def par_id(self) -> int:
        return self._ids[PAR]

    @property
    def image_start_id(self) -> int:
        return self._ids[IMAGE_START]

    @property
    def image_end_id(self) -> int:
        return self._ids[IMAGE_END]

    @property
    def vec_id(self) -> int:
        return self._ids[VEC]
