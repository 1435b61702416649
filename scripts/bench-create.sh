#!/usr/bin/env bash
# Creating keys over HTTP with the real binary (docs/benchmarks.md, "Creating keys one at a
# time"): one client in turn, then several at once.
#
#   scripts/bench-create.sh
#
# Builds the release binary, and for each backend starts `keyward serve` on a fresh database
# (a temporary SQLite file; PostgreSQL database `keyward_bench_create` on 127.0.0.1:5432, user
# postgres, skipped when none answers), bootstraps an admin token, creates a keyspace, then
# sends BENCH_CREATES `POST /v1/keys` from curl over one connection, and BENCH_CREATES more with
# BENCH_PARALLEL at once. Prints keys/s for each, the answers' status codes, how many keys were
# created in one round trip (`keyward_keys_created_predicted_total` on /metrics), and whether
# `GET /v1/audit/verify` finds the chain whole.
#
# Settings (environment): BENCH_CREATES (1000), BENCH_PARALLEL (8), BENCH_BACKENDS
# ("sqlite postgres"), BENCH_SKIP_BUILD (set: use the binary as built), BENCH_BIN (the binary;
# target/release/keyward).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

: "${BENCH_CREATES:=1000}"
: "${BENCH_PARALLEL:=8}"
: "${BENCH_BACKENDS:=sqlite postgres}"
: "${BENCH_BIN:=target/release/keyward}"
for tool in curl jq bc python3 realpath; do
    command -v "$tool" >/dev/null || { echo "bench-create: $tool is needed" >&2; exit 1; }
done
[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release -q
bin="$(realpath "$BENCH_BIN")"
dir="$(mktemp -d)"
server=""
cleanup() {
    local status=$?
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        echo "bench-create: failed; the server's log:" >&2
        cat "$dir"/serve-*.log "$dir"/curl.err >&2 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A curl config of BENCH_CREATES requests, each writing its status code on a line.
requests() {
    local url=$1 token=$2 ks=$3 from=$4
    for ((i = from; i < from + BENCH_CREATES; i++)); do
        printf 'url = "%s/v1/keys"\nheader = "Authorization: Bearer %s"\n' "$url" "$token"
        printf 'header = "content-type: application/json"\n'
        printf 'data = "{\\"keyspace_id\\":\\"%s\\",\\"owner\\":\\"team-a\\",\\"name\\":\\"k%d\\"}"\n' "$ks" "$i"
        printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n'
        if ((i + 1 < from + BENCH_CREATES)); then printf 'next\n'; fi
    done
}

# Runs curl with a config and prints "keys/s  status-code counts".
timed() {
    local start end codes
    start=$(date +%s.%N)
    codes=$(curl -s "$@" 2>"$dir/curl.err" | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
    end=$(date +%s.%N)
    printf '%8.0f keys/s   %s\n' "$(echo "$BENCH_CREATES / ($end - $start)" | bc -l)" "$codes"
}

for backend in $BENCH_BACKENDS; do
    case $backend in
        sqlite) db="sqlite://$dir/create.db" ;;
        postgres)
            if ! command -v psql >/dev/null; then
                echo "postgres: SKIPPED (no psql)"
                continue
            fi
            if ! err=$(psql -w -h 127.0.0.1 -U postgres -d postgres -qc \
                "DROP DATABASE IF EXISTS keyward_bench_create" 2>&1); then
                echo "postgres: SKIPPED ($err)"
                continue
            fi
            db="postgres://postgres@127.0.0.1:5432/keyward_bench_create"
            ;;
        *) echo "bench-create: unknown backend $backend" >&2; exit 2 ;;
    esac
    port=$(free_port)
    url="http://127.0.0.1:$port"
    export KEYWARD_DATABASE_URL=$db KEYWARD_LISTEN="127.0.0.1:$port" RUST_LOG=warn
    token=$("$bin" token create --name bench --role admin)
    "$bin" serve >"$dir/serve-$backend.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
    kill -0 "$server" 2>/dev/null || { echo "bench-create: keyward serve stopped" >&2; exit 1; }
    ks=$(curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"name\":\"bench\",\"prefix\":\"bench$backend\"}" "$url/v1/keyspaces" | jq -r .id)
    requests "$url" "$token" "$ks" 0 >"$dir/one.cfg"
    requests "$url" "$token" "$ks" "$BENCH_CREATES" >"$dir/many.cfg"
    printf '%s, one client:         ' "$backend"
    timed -K "$dir/one.cfg"
    printf '%s, %s clients at once: ' "$backend" "$BENCH_PARALLEL"
    timed -Z --parallel-max "$BENCH_PARALLEL" -K "$dir/many.cfg"
    predicted=$(curl -s "$url/metrics" | awk '$1 == "keyward_keys_created_predicted_total" {print $2}')
    chain=$(curl -s -H "Authorization: Bearer $token" "$url/v1/audit/verify" | jq -c '{ok, events}')
    echo "$backend: $predicted of $((2 * BENCH_CREATES)) created in one round trip; audit chain $chain"
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
done
