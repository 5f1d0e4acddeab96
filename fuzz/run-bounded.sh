#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on the stable toolchain (coverage-guided libFuzzer,
# no sanitizers) and fails on any crash. CI calls this; `FUZZ_SECONDS` sets the time per target.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-30}
target=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build -q --release --bins --target "$target"
for t in h1_request_head h1_response_head h1_chunked h1_rechunk h2_translate h2_frame_meter; do
  mkdir -p "corpus/$t" artifacts
  echo "fuzz: $t for ${seconds}s"
  "./target/$target/release/$t" "corpus/$t" -max_total_time="$seconds" -artifact_prefix=artifacts/ -print_final_stats=1 2>&1 | tail -3
done
echo "fuzz: 6 passed, 0 failed"
