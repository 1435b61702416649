#!/usr/bin/env bash
# Start-up with many keys stored (docs/benchmarks.md):
#
#   scripts/bench-startup.sh
#
# Builds the release binary, creates a SQLite database with the binary (migrations and an admin
# token), bulk-inserts BENCH_STARTUP_KEYS (1,000,000) keys with typical fields straight into it
# with the sqlite3 CLI (random 32-byte hashes: the server only ever sees SHA-256 digests, and
# nothing here verifies these keys), then starts `keyward serve` BENCH_STARTUP_RUNS (3) times and
# prints the time from process start to the first 200 from /readyz, the server's resident memory
# then, and the time of one verification that reads the store (an uncached key among all those
# rows). Target of issue 6: serving within 10 s.
#
# Settings (environment): BENCH_STARTUP_KEYS, BENCH_STARTUP_RUNS, BENCH_SKIP_BUILD (set: use the
# binary as built), BENCH_KEEP (set: keep the temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BENCH_STARTUP_KEYS:=1000000}"
: "${BENCH_STARTUP_RUNS:=3}"

say() { echo "bench-startup: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

for tool in curl jq sqlite3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (apt-get install -y $tool)"
done
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  say "building the release binary"
  cargo build --release -p keyward >&2
fi
bin="${CARGO_TARGET_DIR:-target}/release/keyward"
[ -x "$bin" ] || die "$bin is missing"

work=$(mktemp -d -t keyward-bench-startup.XXXXXX)
dbfile="$work/keyward.db"
db="sqlite://$dbfile"
pid=""
stop() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
cleanup() {
  stop
  if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$work"; else say "kept $work"; fi
}
trap cleanup EXIT

token=$("$bin" token create --name bench --role admin --database-url "$db")
say "inserting $BENCH_STARTUP_KEYS keys with sqlite3"
started=$(now_ms)
t=$(now_ms)
sqlite3 "$dbfile" >/dev/null <<SQL
PRAGMA synchronous = OFF;
BEGIN;
INSERT INTO keyspaces (id, name, prefix, policy, created_at, updated_at) VALUES
  ('ks_00000000benchbench0001', 'Bench', 'bench',
   '{"max_lifetime_secs":15552000,"rotation_grace_secs":86400,"max_grace_secs":604800,"inactivity_revoke_secs":15552000,"expiry_warning_secs":1209600,"require_owner":true,"max_keys_per_owner":null}',
   $t, $t);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $BENCH_STARTUP_KEYS)
INSERT INTO keys (id, keyspace_id, name, owner, scopes, labels, meta, hash, start_chars,
                  end_chars, enabled, created_at, created_by, updated_at, expires_at)
SELECT printf('key_%022d', i), 'ks_00000000benchbench0001', 'billing service ' || i,
       'team-billing', '["orders:read","orders:write"]', '{"env":"prod"}', '{}',
       randomblob(32), 'bench_' || printf('%04d', i % 10000), printf('%04d', i % 10000), 1,
       $t, '{"type":"cli","id":"cli","name":"bench"}', $t, $t + 15552000000
FROM n;
-- What the control plane writes with every key: its change-feed row.
INSERT INTO change_feed (key_id, key_hash, at, origin)
SELECT id, hash, created_at, 'bench' FROM keys ORDER BY created_at;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
stored=$(sqlite3 "$dbfile" 'SELECT count(*) FROM keys')
[ "$stored" -eq "$BENCH_STARTUP_KEYS" ] || die "stored $stored keys"
say "stored $stored keys in $(($(now_ms) - started)) ms; database $(du -h "$dbfile" | cut -f1)"

# start NAME: starts the server; sets pid and url once /readyz answers 200, and ready (ms).
start() {
  local log="$work/server-$1.log" t0
  t0=$(now_ms)
  KEYWARD_LOG="warn,keyward::offline=info" "$bin" serve --listen 127.0.0.1:0 --database-url "$db" \
    >"$work/server-$1.out" 2>"$log" &
  pid=$!
  url=""
  while :; do
    if [ -z "$url" ]; then
      url=$(grep -o 'listening on http://[0-9.:]*' "$log" 2>/dev/null | head -n1 | sed 's/listening on //') || true
    fi
    if [ -n "$url" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ]; then
      break
    fi
    kill -0 "$pid" 2>/dev/null || die "the server stopped: $(cat "$log")"
    [ $(($(now_ms) - t0)) -lt 60000 ] || die "not ready after 60 s"
    sleep 0.01
  done
  ready=$(($(now_ms) - t0))
}

# One real key, created through the API by a first (untimed) start: each timed start verifies it
# once, which reads it from the store among all the others.
start setup
auth=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
ks=$(curl -fsS "${auth[@]}" -d '{"name": "Probe", "prefix": "probe"}' "$url/v1/keyspaces" | jq -r .id)
probe=$(curl -fsS "${auth[@]}" -d "{\"keyspace_id\": \"$ks\", \"name\": \"probe\", \"owner\": \"bench\"}" \
  "$url/v1/keys" | jq -r .key)
stop

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "start-up with $stored keys stored (target: serving within 10 s)"
for run in $(seq 1 "$BENCH_STARTUP_RUNS"); do
  start "$run"
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  answer=$(curl -fsS -w ' %{time_total}' -H 'Content-Type: application/json' \
    -d "{\"key\": \"$probe\"}" "$url/v1/verify")
  code=$(jq -r .code <<<"${answer% *}")
  printf '  run %d: /readyz 200 after %5d ms; resident memory then %5.1f MiB; one uncached verification %.2f ms (%s); %s\n' \
    "$run" "$ready" "$(awk "BEGIN {print $rss / 1024}")" "$(awk "BEGIN {print ${answer##* } * 1000}")" \
    "$code" "$([ "$ready" -lt 10000 ] && echo "target met" || echo "target MISSED")"
  stop
done
