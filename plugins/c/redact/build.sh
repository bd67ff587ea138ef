#!/usr/bin/env bash
# Builds the C redact handler into a component: plugins/dist/lang/redact-c.wasm (+ redact-c.yml).
# Needs clang (with wasm32-wasi support), wasm-ld, wasi-libc, wit-bindgen and wasm-tools:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
#   cargo install --locked wit-bindgen-cli wasm-tools
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

need() {
    command -v "$1" >/dev/null || { echo "$1 not found: $2" >&2; exit 1; }
}
apt_hint="apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
need clang "$apt_hint"
need wasm-ld "$apt_hint (wasm-ld is in lld)"
need wit-bindgen "cargo install --locked wit-bindgen-cli"
need wasm-tools "cargo install --locked wasm-tools"

out="$root/plugins/dist/lang"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Bindings for the `handler` world: handler.h, handler.c, handler_component_type.o.
if ! wit-bindgen c --world handler "$root/wit" --out-dir "$tmp/gen" >"$tmp/wit-bindgen.log" 2>&1; then
    cat "$tmp/wit-bindgen.log" >&2
    exit 1
fi

# A reactor core module (no `main`); -s drops the names, not the component-type section.
if ! clang --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra -Werror \
    -I "$tmp/gen" -o "$tmp/core.wasm" -s \
    "$here/redact.c" "$tmp/gen/handler.c" "$tmp/gen/handler_component_type.o"; then
    echo "clang failed: is the wasm32-wasi target installed? $apt_hint" >&2
    exit 1
fi

# The module must not need WASI (no preview1 adapter).
if wasm-tools print "$tmp/core.wasm" | grep '(import "wasi_snapshot_preview1"' >&2; then
    echo "core module imports WASI functions (above): not allowed" >&2
    exit 1
fi

wasm-tools component new "$tmp/core.wasm" -o "$tmp/redact-c.wasm"
wasm-tools validate "$tmp/redact-c.wasm"
mv "$tmp/redact-c.wasm" "$out/redact-c.wasm.$$"
mv "$out/redact-c.wasm.$$" "$out/redact-c.wasm"
cp "$root/plugins/redact/redact.yml" "$out/redact-c.yml"
echo "built $out/redact-c.wasm ($(wc -c <"$out/redact-c.wasm") bytes)"
