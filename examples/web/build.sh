#!/usr/bin/env bash
# Builds the web example for the browser: wasm32 release build, then wasm-bindgen's JS glue
# into examples/web/www/pkg. Needs the wasm32 target and wasm-bindgen-cli at the version in
# Cargo.lock (.ci/run installs both).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -p rekord-web-example --target wasm32-unknown-unknown --release
wasm-bindgen --target web --no-typescript --out-dir examples/web/www/pkg \
  target/wasm32-unknown-unknown/release/rekord_web_example.wasm
