#!/usr/bin/env bash
# Builds {name}.wasm from handler.c against wit/ (world `handler`): wit-bindgen writes the C
# bindings into gen/, clang compiles a wasm32-wasi core module, wasm-tools makes it a component.
set -euo pipefail
cd "$(dirname "$0")"
need() {
  command -v "$1" >/dev/null || { echo "$1 not found: $2" >&2; exit 1; }
}
need clang "apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
need wasm-ld "apt-get install lld"
need wit-bindgen "cargo install --locked wit-bindgen-cli"
need wasm-tools "cargo install --locked wasm-tools"
rm -rf gen
mkdir gen
wit-bindgen c --world handler wit --out-dir gen >/dev/null
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Igen \
  handler.c gen/handler.c gen/handler_component_type.o -o gen/{name}.core.wasm
wasm-tools component new gen/{name}.core.wasm -o {name}.wasm
echo "built $(pwd)/{name}.wasm"
