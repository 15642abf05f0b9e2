#!/usr/bin/env bash
# The main job on built-in data; the README's first command runs it inside the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== how big each vector system is for 600,000 classes"
lscindex systems --classes 600000

echo "== decoding 20,000 embeddings among 600,000 classes"
python examples/decode.py
