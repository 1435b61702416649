#!/usr/bin/env bash
# The long fuzzing run: KEYWARD_FUZZ_INPUTS generated and mutated inputs per target (default
# 10,000,000) for the key parser, RFC 8785 canonicalization, CIDR parsing, and JSON bodies and
# list cursors through the real router over SQLite. `cargo test` runs 20,000 per target.
#   scripts/fuzz.sh [INPUTS] [TEST-NAME-FILTER]
#   KEYWARD_FUZZ_SEED=N scripts/fuzz.sh ...   replays a run (each failure prints its input)
set -euo pipefail
cd "$(dirname "$0")/.."
export KEYWARD_FUZZ_INPUTS="${1:-10000000}"
filter="${2:-}"
seed="${KEYWARD_FUZZ_SEED:-$(date +%s%N)}"
export KEYWARD_FUZZ_SEED="$seed"
echo "fuzz: $KEYWARD_FUZZ_INPUTS inputs per target, seed $seed" >&2
start=$(date +%s)
cargo test --release -p keyward-server --test fuzz -- --test-threads=2 $filter 2>&1 |
  grep -E '^test |test result|panicked|input [0-9]+'
echo "fuzz: done in $(( $(date +%s) - start )) s" >&2
