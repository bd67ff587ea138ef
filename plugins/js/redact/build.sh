#!/usr/bin/env bash
# Builds the JavaScript redact handler into a component: plugins/dist/lang/redact-js.wasm.
# Needs Node.js 20+ and npm; componentize-js comes from npm at the version package-lock.json pins
# (installed into node_modules/ here on first use).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
command -v npm >/dev/null || { echo "npm not found: install Node.js 20+ (apt-get install nodejs npm)" >&2; exit 1; }
out="$root/plugins/dist/lang"
mkdir -p "$out"
cd "$here"
# (package.json also names @bytecodealliance/preview2-shim: componentize-js 0.23.0 imports it
# but declares it only as a dev dependency, so npm does not always install it where it looks.)
if [ ! -x node_modules/.bin/componentize-js ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# WASI features the handler does not use are left out, so the component imports only
# `outrigger:plugin/host` and what StarlingMonkey itself needs.
node_modules/.bin/componentize-js redact.js --wit "$root/wit" --world-name handler \
  -d stdio random clocks http fetch-event -o "$out/redact-js.wasm.$$"
mv "$out/redact-js.wasm.$$" "$out/redact-js.wasm"
cp "$root/plugins/redact/redact.yml" "$out/redact-js.yml"
