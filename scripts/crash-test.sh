#!/usr/bin/env bash
# The long crash test: kill -9 under concurrent creates, patches, revokes, rotations and
# verifications, restart, check every acknowledged change, the audit chain and lost usage;
# on SQLite and PostgreSQL. `scripts/crash-test.sh [CYCLES]` (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-20}"
KEYWARD_CRASH_CYCLES="$cycles" cargo test -p keyward --test api crash:: -- --nocapture --test-threads=1 2>&1 |
  grep -E '^crash test|^test |test result'
