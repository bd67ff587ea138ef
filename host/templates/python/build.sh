#!/usr/bin/env bash
# Builds {name}.wasm from app.py against wit/ (world `handler`).
# Needs componentize-py: pip install componentize-py==0.25.1
set -euo pipefail
cd "$(dirname "$0")"
command -v componentize-py >/dev/null || {
  echo "componentize-py not found: pip install componentize-py==0.25.1" >&2
  exit 1
}
componentize-py -d wit -w handler componentize app -o {name}.wasm
echo "built $(pwd)/{name}.wasm"
