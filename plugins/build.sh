#!/usr/bin/env bash
# Builds the example and fixture plugins to wasm32-wasip2 components and lays them out for use:
#   plugins/dist/NAME.wasm (+ NAME.yml, the example config)   example plugins
#   plugins/dist/fixtures/NAME.wasm                           test fixtures
# Run from anywhere. Extra arguments go to cargo (e.g. --locked).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"   # .cargo/config.toml here selects the wasm32-wasip2 target
cargo build --release --target wasm32-wasip2 "$@"
out="$here/target/wasm32-wasip2/release"
mkdir -p dist/fixtures
for p in redact error-alert drop-debug; do
  cp "$out/${p//-/_}.wasm" "dist/$p.wasm.$$" && mv "dist/$p.wasm.$$" "dist/$p.wasm"
  if [ -f "$p/$p.yml" ]; then cp "$p/$p.yml" "dist/$p.yml"; fi
done
for p in misbehave emitter; do
  cp "$out/${p//-/_}.wasm" "dist/fixtures/$p.wasm.$$" && mv "dist/fixtures/$p.wasm.$$" "dist/fixtures/$p.wasm"
done
echo "plugins built into $here/dist"
