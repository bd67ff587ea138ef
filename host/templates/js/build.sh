#!/usr/bin/env bash
# Builds {name}.wasm from handler.js against wit/ (world `handler`).
# Needs Node.js 20+ and npm; componentize-js is installed into node_modules/ on first use, at the
# versions package-lock.json pins (`npm ci`: the same packages every time, whatever the registry
# serves that day; it fails if package.json and the lockfile disagree).
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "npm not found: install Node.js 20+ and npm" >&2; exit 1; }
# (package.json also names @bytecodealliance/preview2-shim: componentize-js 0.23.0 imports it
# but declares it only as a dev dependency, so npm does not always install it where it looks.)
if [ ! -x node_modules/.bin/componentize-js ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# WASI features the plugin does not use are left out, so the component imports only
# `outrigger:plugin/host` and what the JavaScript engine itself needs.
node_modules/.bin/componentize-js handler.js --wit wit --world-name handler \
  -d stdio random clocks http fetch-event -o {name}.wasm
echo "built $(pwd)/{name}.wasm"
