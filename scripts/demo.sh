#!/usr/bin/env bash
# The pipeline on the embedded defaults. Each stage reuses its output when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
DA=".venv/bin/distalign"

echo "== 1. the default model (SmolLM2-135M-Instruct from the embedded GGUF, converted once)"
$DA model prepare

echo "== 2. one prompt"
$DA generate configs/generate.yaml

echo "== 3. a small preference file"
$DA data inspect examples/hh_sample.jsonl.gz
