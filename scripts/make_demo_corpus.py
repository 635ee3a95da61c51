"""Rebuild the bundled demo corpus from minipile (maintainers only).

    python scripts/make_demo_corpus.py ../shared/minipile

Takes whole documents, in file order, from each split of the four permissively
licensed minipile domains until a character budget per split is reached, and writes
`mlx_specialize/data/demo/DOMAIN.jsonl.gz` (same schema as minipile: text, source,
split). Deterministic: the same input gives byte-identical output.
"""

import gzip
import json
import sys
from pathlib import Path

DOMAINS = ["go-code", "postgres-docs", "python-code", "python-docs"]
CHARS_PER_SPLIT = {"train": 1_000_000, "valid": 100_000, "test": 100_000}
OUT = Path(__file__).resolve().parent.parent / "mlx_specialize" / "data" / "demo"


def main(minipile: Path) -> None:
    for domain in DOMAINS:
        used = dict.fromkeys(CHARS_PER_SPLIT, 0)
        kept = []
        with gzip.open(minipile / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                split = doc["split"]
                if used[split] < CHARS_PER_SPLIT[split]:
                    used[split] += len(doc["text"])
                    kept.append({k: doc[k] for k in ("text", "source", "split")})
        path = OUT / f"{domain}.jsonl.gz"
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for doc in kept:
                gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
        print(domain, used, path.stat().st_size)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
