"""Our MLX MiniLM encoder vs sentence-transformers on the same checkpoint (CPU).

    pip install sentence-transformers   # benchmark only, never a project dependency
    python benchmarks/minilm_equivalence.py

Texts: the test documents of the bundled `python-docs` and `go-code` corpora, cut into
consecutive windows of about `--chars` characters (at whitespace), `--limit` at most.
Each side runs in its own subprocess, so neither's BLAS affects the other (importing
mlx_specialize loads OpenBLAS with RTLD_GLOBAL, which slows PyTorch ~5x; the
sentence-transformers side runs with MLXSPEC_BLAS=off and never imports our package).
Each side embeds all windows once to warm up, then `--repeats` timed passes (same batch
size, both sorting by length); the best pass gives windows/s. Prints the min / median /
mean cosine similarity between the two sides' vectors (target: min >= 0.99999).
`--json` prints one object last: `ratio` (our windows/s over sentence-transformers'),
`cosine_min`, both sides' windows/s and the number of windows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def windows(chars: int, limit: int) -> list[str]:
    """Consecutive ~`chars`-character windows of the bundled test documents."""
    import mlx_specialize as ms

    out = []
    for corpus in ("python-docs", "go-code"):
        for doc in ms.load_corpus(corpus).documents("test"):
            start = 0
            while start < len(doc) - chars // 4:
                end = min(len(doc), start + chars)
                if end < len(doc):  # end at whitespace so no word is cut
                    space = doc.rfind(" ", start + chars // 2, end)
                    end = space if space > 0 else end
                text = doc[start:end].strip()
                if text:
                    out.append(text)
                start = end
    return out[:limit]


def run_side(side: str, model: str, texts_file: str, out_file: str, batch: int, repeats: int) -> None:
    """One side, in a fresh process: embed, time, save vectors (.npy) and timing (.json)."""
    texts = json.loads(Path(texts_file).read_text())
    if side == "ours":
        import mlx_specialize  # noqa: F401  first: optimized BLAS before mlx.core
        from mlx_specialize.data.minilm import MiniLMEmbedder

        embedder = MiniLMEmbedder(model, batch_size=batch)
        encode = embedder.embed
        info = {"blas": mlx_specialize.BLAS.name}
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model, device="cpu")

        def encode(t):
            return st.encode(t, batch_size=batch, convert_to_numpy=True, normalize_embeddings=False)

        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "max_seq_length": st.max_seq_length}
    vectors = encode(texts)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = encode(texts)
        times.append(time.perf_counter() - start)
    np.save(out_file, np.asarray(vectors, dtype=np.float32))
    info["windows_per_s"] = len(texts) / min(times)
    Path(out_file + ".json").write_text(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="folder or hub name (default: MiniLMEmbedder's DEFAULT_MODEL)")
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object last (ratio, cosine_min)")
    parser.add_argument("--side", choices=["ours", "sentence-transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.model, args.texts, args.out, args.batch_size, args.repeats)
        return

    from mlx_specialize.data.minilm import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    texts = windows(args.chars, args.limit)
    lengths = [len(t) for t in texts]
    print(f"model: {model}")
    print(f"windows: {len(texts)} (python-docs + go-code test documents), "
          f"chars min/median/max {min(lengths)}/{int(statistics.median(lengths))}/{max(lengths)}")
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = os.path.join(tmp, "texts.json")
        Path(texts_file).write_text(json.dumps(texts))
        results = {}
        for side, env in (("ours", {}), ("sentence-transformers", {"MLXSPEC_BLAS": "off"})):
            out = os.path.join(tmp, f"{side}.npy")
            cmd = [sys.executable, __file__, "--side", side, "--model", model, "--texts", texts_file, "--out", out,
                   "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True, env={**os.environ, **env})
            results[side] = (np.load(out), json.loads(Path(out + ".json").read_text()))
    ours, theirs = results["ours"][0], results["sentence-transformers"][0]
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    print(f"cosine(ours, sentence-transformers): min {cos.min():.6f}  median {np.median(cos):.6f}  "
          f"mean {cos.mean():.6f}  (target min >= 0.99999: {'PASS' if cos.min() >= 0.99999 else 'FAIL'})")
    print(f"max |ours - theirs| over all coordinates: {np.abs(ours - theirs).max():.2e}")
    for side, (_, info) in results.items():
        extra = ", ".join(f"{k}={v}" for k, v in info.items() if k != "windows_per_s")
        print(f"{side:>22}: {info['windows_per_s']:7.1f} windows/s  (batch {args.batch_size}, best of "
              f"{args.repeats}; {extra})")
    ours_speed, theirs_speed = (results[side][1]["windows_per_s"] for side in ("ours", "sentence-transformers"))
    print(f"ours / sentence-transformers: {ours_speed / theirs_speed:.2f}x")
    if args.json:
        print(json.dumps({"ratio": ours_speed / theirs_speed, "cosine_min": float(cos.min()),
                          "ours_windows_per_s": ours_speed, "theirs_windows_per_s": theirs_speed,
                          "windows": len(texts)}))


if __name__ == "__main__":
    main()
