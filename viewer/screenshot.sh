#!/usr/bin/env bash
# Makes docs/viewer.png: the real rekord-viewer window (eframe, glow) on a demo database,
# under a virtual X display. Needs Xvfb and Mesa's software OpenGL:
#   apt-get install xvfb libgl1-mesa-dri libegl1
set -euo pipefail
cd "$(dirname "$0")/.."
db="$(mktemp -d)/inventory.rekord"
cargo run -q -p rekord-viewer --example demo_db -- "$db" 2000
mkdir -p docs
xvfb-run -a -s "-screen 0 1400x900x24" \
  cargo run -q -p rekord-viewer -- --db "$db" gui --tree parts --key 3 --screenshot docs/viewer.png
echo "wrote docs/viewer.png"
