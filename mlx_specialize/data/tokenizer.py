"""SentencePiece tokenizer: trained on a sample of the generic corpus, saved with models.

BPE with byte fallback (no text is unencodable), identity normalization and no dummy
prefix, so `decode(encode(text)) == text` for any UTF-8 string, code indentation
included. Saved as `tokenizer.model` plus a `tokenizer_config.json` that makes
`transformers.AutoTokenizer` (and so `mlx_lm.load`) read it as a LlamaTokenizer with
exactly the same token ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import SpecializeError

TOKENIZER_FILE = "tokenizer.model"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
HF_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "add_prefix_space": False,
    "legacy": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "clean_up_tokenization_spaces": False,
}
SENTENCE_CHARS = 4000  # training "sentences": documents cut at line breaks
# how a tokenizer's training text is drawn from a corpus' train split: `uniform`, pieces
# spread over all of it; `leading`, its first characters in corpus order, which gives a mix
# of corpora's tokenizer its first corpus alone (the standard study's cells all used it)
TOKENIZER_SAMPLES = ("uniform", "leading")
# `uniform` spreads its sample over at most this many leading characters: a local corpus
# whole, a streamed hub dataset (billions of tokens) not read through to be counted
TOKENIZER_SCAN_CHARS = 100_000_000


class Tokenizer:
    """A SentencePiece model. `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, source: str = "<memory>"):
        import sentencepiece as spm

        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except Exception:  # sentencepiece raises RuntimeError/OSError variants
            raise SpecializeError(f"{source} is not a valid SentencePiece model") from None
        self.fingerprint = hashlib.sha256(model_bytes).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load from a `tokenizer.model` file or a folder holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise SpecializeError(f"no tokenizer at {path}")
        return cls(path.read_bytes(), str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.EncodeAsIds(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def files(self) -> dict[str, bytes]:
        """`tokenizer.model` and the transformers/mlx-lm configs: file name -> content."""
        specials = {k: HF_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token")}
        return {TOKENIZER_FILE: self.model_bytes,
                "tokenizer_config.json": json.dumps(HF_CONFIG, indent=2).encode(),
                "special_tokens_map.json": json.dumps(specials, indent=2).encode()}

    def save(self, folder: str | os.PathLike) -> None:
        """Write `files()` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (folder / name).write_bytes(data)


def _training_sentences(docs: Iterable[str], max_chars: int, keep: float = 1.0,
                        scan_chars: int | None = None) -> Iterator[str]:
    """Cut documents at line breaks into pieces SentencePiece accepts: the first up to
    max_chars (`keep` 1), or each piece whose hash falls below `keep`, a share of them spread
    over the text (its first `scan_chars` characters, else all), the same every time."""
    used = scanned = 0
    for doc in docs:
        start = 0
        while start < len(doc):
            end = min(len(doc), start + SENTENCE_CHARS)
            if end < len(doc):
                cut = doc.rfind("\n", start + 1, end)
                end = cut + 1 if cut > start else end
            piece = doc[start:end]
            start = end
            scanned += len(piece)
            if keep < 1.0:
                if piece.strip() and zlib.crc32(piece.encode("utf-8", "surrogatepass")) < keep * 2**32:
                    yield piece
                if scan_chars is not None and scanned >= scan_chars:
                    return
                continue
            if not piece.strip():
                continue
            yield piece
            used += len(piece)
            if used >= max_chars:
                return


def train_tokenizer(
    docs: Iterable[str],
    vocab_size: int = 8192,
    sample_chars: int = 4_000_000,
    total_chars: int | None = None,
) -> Tokenizer:
    """Train a BPE SentencePiece model on about `sample_chars` characters of `docs`: where
    `total_chars` (what `docs` hold, or what of them to draw from) says there are more, a
    hashed sample of pieces spread over those; else the first `sample_chars` (a mix read in
    order would give the tokenizer its first corpus only).

    The vocabulary is a soft limit on tiny samples (the trainer stops where the text
    runs out of merges) so small test corpora still train. BPE training is
    deterministic: the same text gives the same model."""
    import sentencepiece as spm

    if vocab_size < 300:
        raise SpecializeError(f"vocab size {vocab_size} is too small: byte fallback alone needs 259 ids")
    keep = 1.0 if not total_chars or total_chars <= sample_chars else sample_chars / total_chars
    sentences = list(_training_sentences(docs, sample_chars, keep, total_chars))
    if not sentences and keep < 1.0:  # pieces of thousands of characters, each kept with chance `keep`
        raise SpecializeError(f"tokenizer training failed: a sample of {sample_chars:,} of the corpus' "
                              f"{total_chars:,} characters drew none of its text; sample more")
    if not sentences:
        raise SpecializeError("cannot train a tokenizer: the corpus has no text")
    # Trained into memory: no temporary path ends up inside the model, so the same
    # text always gives byte-identical models (and the same fingerprint).
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=0.9995,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            max_sentence_length=4 * SENTENCE_CHARS + 16,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise SpecializeError(f"tokenizer training failed: {str(err).splitlines()[0]}") from None
    return Tokenizer(model.getvalue())


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the tokenizer files of one model folder into another."""
    for name in (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def token_dtype(vocab_size: int):
    """Smallest unsigned dtype that holds every id."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
