#!/usr/bin/env bash
# Builds {name}.wasm from app.py against wit/ (world `handler`).
# Needs componentize-py: pip install componentize-py==0.25.1
set -euo pipefail
cd "$(dirname "$0")"
command -v componentize-py >/dev/null || {
  echo "componentize-py not found: pip install componentize-py==0.25.1" >&2
  exit 1
}
# --stub-wasi: every WASI import of the Python runtime becomes a stub that traps, so the component
# imports only outrigger:plugin/*. Without it, it imports wasi:filesystem and wasi:sockets, which
# Outrigger refuses from a plugin without grants (sockets always). So: log with host.log (print
# would trap), and do not read files, the clock or the environment.
componentize-py -d wit -w handler componentize app --stub-wasi -o {name}.wasm
echo "built $(pwd)/{name}.wasm"
