#!/usr/bin/env bash
# Builds the Python redact handler into a component: plugins/dist/lang/redact-py.wasm.
# Needs componentize-py (pip install componentize-py==0.25.1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip install componentize-py==0.25.1" >&2; exit 1; }
out="$root/plugins/dist/lang"
mkdir -p "$out"
cd "$here"
componentize-py -d "$root/wit" -w handler componentize app -o "$out/redact-py.wasm.$$"
mv "$out/redact-py.wasm.$$" "$out/redact-py.wasm"
cp "$root/plugins/redact/redact.yml" "$out/redact-py.yml"
