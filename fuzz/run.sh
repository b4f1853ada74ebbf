#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 600) with libFuzzer,
# growing the corpus kept in fuzz/corpus/<target>/, then minimizes each corpus. Crashes
# land in fuzz/artifacts/<target>/: replay one with
#   cargo fuzz run -s none --features libfuzzer <target> fuzz/artifacts/<target>/<file>
# and, once fixed, copy it into fuzz/corpus/<target>/ so the tests replay it for good.
#
#   fuzz/run.sh                      # every target, 10 minutes each
#   SECONDS_EACH=60 fuzz/run.sh frame dynamic
#
# Needs cargo-fuzz (installed here when missing). The machines carry the stable toolchain:
# `-s none` builds without sanitizers, which needs no nightly; coverage instrumentation
# (SanitizerCoverage) works on stable.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
each=${SECONDS_EACH:-600}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# The file format target reads whole database files. A damaged page reference can make
# redb itself allocate a page of up to 2 GiB before it reads it (redb 4.5,
# cached_file.rs zero_filled_arc; found by this target, reported in ARCHITECTURE.md
# "Fuzzing"): that target gets room for it, the others keep libFuzzer's 2 GiB limit.
max_len() { [ "$1" = damaged_file ] && echo 200000 || echo 65536; }
rss() { [ "$1" = damaged_file ] && echo 6144 || echo 2048; }
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${each}s"
  cargo fuzz run -s none --features libfuzzer -O "$t" -- \
    -max_total_time="$each" -max_len="$(max_len "$t")" -rss_limit_mb="$(rss "$t")" \
    -malloc_limit_mb="$(rss "$t")" -print_final_stats=1 \
    > "logs/$t.log" 2>&1 || { echo "$t: a crash (see fuzz/logs/$t.log, fuzz/artifacts/$t/)"; tail -30 "logs/$t.log"; exit 1; }
  grep -E "DONE" "logs/$t.log" | tail -1 || true
  cargo fuzz cmin -s none --features libfuzzer -O "$t" -- -max_len="$(max_len "$t")" > "logs/$t.cmin.log" 2>&1
  echo "   corpus: $(ls "corpus/$t" | wc -l) inputs"
done
