#!/bin/sh
# After new cells land in studies/minipile/results.jsonl: the README's results table and
# its `mlxspec plan` example, docs/study/ (tables and figures) and the planner's packaged
# fit, all from the results alone (nothing is trained). Tests check each against them.
set -e
cd "$(dirname "$0")/.."
mlxspec study report studies/minipile/results.jsonl --spec studies/minipile/spec.toml --out docs/study --readme README.md > /dev/null
mlxspec plan --results studies/minipile/results.jsonl --spec studies/minipile/spec.toml --save-fit mlx_specialize/plan/fitted.json > /dev/null
COLUMNS=160 mlxspec plan --domains 3 | python -c '
import sys
from pathlib import Path
from mlx_specialize.study.report import write_headline
write_headline(Path("README.md"), "```text\n" + sys.stdin.read().rstrip() + "\n```",
               "<!-- plan example: mlxspec plan --domains 3 -->", "<!-- /plan example -->")'
