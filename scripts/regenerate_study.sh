#!/bin/sh
# After new cells land in studies/minipile/results.jsonl: the README's results table and
# its `mlxspec plan` example, docs/study/ (tables and figures) and the planner's packaged
# fit and tokenizer, all from the results alone (nothing is trained but that tokenizer,
# where the cache has lost it). Tests check each against them.
# Needs an editable install (pip install -e .): the plan example must be planned with the
# fitted.json this script has just written into the checkout.
set -e
cd "$(dirname "$0")/.."
case "$(cd / && python3 -c 'import mlx_specialize, os; print(os.path.realpath(mlx_specialize.__file__))' 2>/dev/null)" in
    "$(pwd -P)"/*) ;;
    *) echo "regenerate_study.sh: needs mlx_specialize installed from this checkout: pip install -e ." >&2; exit 2 ;;
esac
spec=studies/minipile/spec.toml
# one snapshot of the results for every step: a study running beside this script appends
# lines, and the table and the fit must come from the same ones (the fit names the file by
# its name and a digest of its bytes, so the copy keeps the name)
snapshot=$(mktemp -d)
trap 'rm -rf "$snapshot"' EXIT
# (an argument names another copy of it: the committed one, say, while new lines wait)
cp "${1:-studies/minipile/results.jsonl}" "$snapshot/results.jsonl"
results=$snapshot/results.jsonl
mlxspec study report "$results" --spec "$spec" --out docs/study --readme README.md > /dev/null
mlxspec plan --results "$results" --spec "$spec" --save-fit mlx_specialize/plan/fitted.json > /dev/null
# the study's tokenizer beside its fit (`plan --domain` counts a domain's tokens with it):
# the one its cells used, from the spec's generic corpus (deterministic; cached)
python3 -c '
from pathlib import Path
from mlx_specialize.methods.clusters import generic_tokenizer
from mlx_specialize.models.presets import get_preset
from mlx_specialize.runtime.cache import default_cache_dir
from mlx_specialize.study import load_study
study = load_study("studies/minipile/spec.toml")
tokenizer = generic_tokenizer(study.generic, get_preset(study.preset).vocab, default_cache_dir(),
                              study.tokenizer_sample)
Path("mlx_specialize/plan/tokenizer.model").write_bytes(tokenizer.model_bytes)'

# captured first: a failing plan stops the script here rather than blanking the example
example=$(COLUMNS=160 mlxspec plan --domains 3)
printf '%s\n' "$example" | python3 -c '
import sys
from pathlib import Path
from mlx_specialize.study.report import write_headline
write_headline(Path("README.md"), "```text\n" + sys.stdin.read().rstrip() + "\n```",
               "<!-- plan example: mlxspec plan --domains 3 -->", "<!-- /plan example -->", option="")'
