#!/bin/sh
# After new cells land in studies/minipile/results.jsonl: the README's results table,
# docs/study/ (tables and figures) and the planner's packaged fit, all from the results
# alone (nothing is trained). Tests check each against the results file.
set -e
cd "$(dirname "$0")/.."
mlxspec study report studies/minipile/results.jsonl --spec studies/minipile/spec.toml --out docs/study --readme README.md > /dev/null
mlxspec plan --results studies/minipile/results.jsonl --spec studies/minipile/spec.toml --save-fit mlx_specialize/plan/fitted.json > /dev/null
