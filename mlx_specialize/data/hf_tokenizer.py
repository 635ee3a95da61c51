"""Tokenizers of models that come from elsewhere (mlx-lm / Hugging Face folders).

A model folder we did not train carries its own tokenizer (`tokenizer.json`,
`tokenizer_config.json`, maybe `tokenizer.model`), read with `transformers` exactly as
`mlx_lm.load` reads it. `HFTokenizer` gives it the interface of our SentencePiece
`Tokenizer` (encode, encode_batch, decode, save, fingerprint, bos_id, eos_id), so
tokenizing, training, evaluation and generation need not know which one they hold.

Document boundaries follow the tokenizer's own convention: a document starts with the
token the tokenizer itself prepends (`bos_id`, e.g. Llama's `<s>`; None for tokenizers
such as GPT-2's or Qwen's that prepend nothing) and ends with its `eos_id`.

`load_tokenizer(folder)` picks the right class for a model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from ..errors import SpecializeError
from .tokenizer import TOKENIZER_FILE, Tokenizer

# Files a Hugging Face tokenizer may consist of; copied verbatim when a model is saved,
# so the fingerprint (a hash of these bytes) survives fine-tuning and export.
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


class HFTokenizer:
    """A `transformers` tokenizer read from a local folder, with our interface."""

    kind = "hf"

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        files = [name for name in HF_TOKENIZER_FILES if (folder / name).is_file()]
        if not files:
            raise SpecializeError(f"no tokenizer files in {folder}")
        try:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # transformers raises many types for a broken folder
            raise SpecializeError(f"cannot read the tokenizer in {folder}: {str(err).splitlines()[0]}") from None
        self.folder, self.files = folder, files
        digest = hashlib.sha256()
        for name in files:
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
        self.fingerprint = digest.hexdigest()[:16]
        if self.tok.eos_token_id is None:
            raise SpecializeError(f"the tokenizer in {folder} has no end-of-text token")
        self._bos = self._prepended_token()

    def _prepended_token(self) -> int | None:
        """The single token the tokenizer puts before a text, if it puts one (and it
        is not the end-of-text token: a GPT-2 style `<|endoftext|>` only ends texts)."""
        plain = self.tok.encode("a", add_special_tokens=False)
        full = self.tok.encode("a", add_special_tokens=True)
        if len(full) == len(plain) + 1 and full[1:] == plain and full[0] != self.tok.eos_token_id:
            return int(full[0])
        return None

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int:
        return int(self.tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, folder: str | os.PathLike) -> None:
        """Copy the tokenizer's files, byte for byte, into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            if (self.folder / name).resolve() != (folder / name).resolve():
                shutil.copy2(self.folder / name, folder / name)


def load_tokenizer(folder: str | os.PathLike, config: dict | None = None):
    """The tokenizer of a model folder: ours (SentencePiece, written by this package)
    or the folder's Hugging Face tokenizer."""
    folder = Path(folder)
    if config is None and (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = None
    ours = (config or {}).get("mlxspec", {})
    has_sp = (folder / TOKENIZER_FILE).is_file()
    if has_sp and "tokenizer" in ours and ours.get("tokenizer_kind", Tokenizer.kind) == Tokenizer.kind:
        return Tokenizer.load(folder)
    if any((folder / name).is_file() for name in HF_TOKENIZER_FILES if name != TOKENIZER_FILE):
        return HFTokenizer(folder)
    if has_sp:
        return Tokenizer.load(folder)
    raise SpecializeError(f"no tokenizer in {folder}")
