#!/usr/bin/env bash
# Builds the Python redact handler into a component: plugins/dist/lang/redact-py.wasm.
# Needs componentize-py (pip install componentize-py==0.25.1).
#
# --stub-wasi replaces every WASI import of the Python runtime with a stub that traps, so the
# component imports only outrigger:plugin/*: without it, it imports wasi:filesystem and
# wasi:sockets, which the host refuses from a plugin without `dirs` grants (and always, for
# sockets). The handler therefore must not print, read files, the clock or the environment,
# or use `random` (its seed is fixed at build time): it logs through host.log only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip install componentize-py==0.25.1" >&2; exit 1; }
out="$root/plugins/dist/lang"
mkdir -p "$out"
cd "$here"
componentize-py -d "$root/wit" -w handler componentize app --stub-wasi -o "$out/redact-py.wasm.$$"
# The component must import nothing from WASI (checked when wasm-tools is installed).
if command -v wasm-tools >/dev/null &&
    wasm-tools component wit "$out/redact-py.wasm.$$" | grep -E '^\s*import wasi:' >&2; then
    rm -f "$out/redact-py.wasm.$$"
    echo "redact-py.wasm imports WASI (above): not allowed" >&2
    exit 1
fi
mv "$out/redact-py.wasm.$$" "$out/redact-py.wasm"
cp "$root/plugins/redact/redact.yml" "$out/redact-py.yml"
