#!/usr/bin/env bash
# Builds the example and fixture plugins to wasm32-wasip2 components and lays them out for use:
#   plugins/dist/NAME.wasm (+ NAME.yml, the example config)   example plugins
#   plugins/dist/fixtures/NAME.wasm                           test fixtures
# Run from anywhere. Extra arguments go to cargo (e.g. --locked). Honours CARGO_TARGET_DIR
# (relative to this directory, as cargo reads it) and fails loudly when a component is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"   # .cargo/config.toml here selects the wasm32-wasip2 target
cargo build --release --target wasm32-wasip2 "$@"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$here/$target" ;; esac
out="$target/wasm32-wasip2/release"
mkdir -p dist/fixtures
install_component() { # crate name, destination
  local src="$out/${1//-/_}.wasm"
  if [ ! -f "$src" ]; then
    echo "plugins/build.sh: cargo built no $src (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2
    exit 1
  fi
  cp "$src" "$2.$$"
  mv "$2.$$" "$2"
}
for p in redact error-alert drop-debug webhook-alert; do
  install_component "$p" "dist/$p.wasm"
  if [ -f "$p/$p.yml" ]; then cp "$p/$p.yml" "dist/$p.yml"; fi
done
for p in misbehave emitter http-poster fs-probe; do
  install_component "$p" "dist/fixtures/$p.wasm"
done
echo "plugins built into $here/dist"
