#!/usr/bin/env bash
# Builds the web example and serves it on http://127.0.0.1:8080/ (the parts list; open it in
# two tabs). Needs the wasm32 target and wasm-bindgen-cli at the version in Cargo.lock
# (`.ci/run` installs both) and Node.js (only its standard library).
set -euo pipefail
cd "$(dirname "$0")"
bash build.sh
exec node tests/serve.mjs "${PORT:-8080}"
