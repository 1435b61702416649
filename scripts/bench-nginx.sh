#!/usr/bin/env bash
# Forward-auth through nginx against nginx alone (docs/benchmarks.md): one nginx (one worker)
# serves three ports: the upstream (`return 200`), the configuration of docs/proxies.md in
# front of it (auth_request to keyward, read out of the document with only the addresses
# changed), and the same proxy without the check. wrk loads both front ports with the same
# requests (GET /orders/1, a different key each) and prints req/s, p50, p99 and the ratio.
#
#   scripts/bench-nginx.sh
#
# Settings: BENCH_KEYS (1000), WRK_THREADS (1), WRK_CONNECTIONS (32), WRK_DURATION (10s),
# BENCH_ROUNDS (3), BENCH_SKIP_BUILD (set: use the release binary as built), BENCH_KEEP.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BENCH_KEYS:=1000}"
: "${WRK_THREADS:=1}"
: "${WRK_CONNECTIONS:=32}"
: "${WRK_DURATION:=10s}"
: "${BENCH_ROUNDS:=3}"

say() { echo "bench-nginx: $*" >&2; }
die() { say "error: $*"; exit 1; }
calc() { awk "BEGIN {printf \"%.4f\", $1}"; }
export PATH="$PATH:/usr/sbin"
for tool in wrk nginx; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "$tool is not installed: installing it"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool") >/dev/null \
      || die "could not install $tool"
  fi
done
for tool in curl jq python3; do command -v "$tool" >/dev/null 2>&1 || die "$tool is required"; done

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  say "building the release binary"
  cargo build --release -p keyward >&2
fi
bin="${CARGO_TARGET_DIR:-target}/release/keyward"
[ -x "$bin" ] || die "$bin is missing"

work=$(mktemp -d -t keyward-bench-nginx.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$work"; else say "kept $work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kw_port=$(free_port); up_port=$(free_port); auth_port=$(free_port); plain_port=$(free_port)

db="sqlite://$work/keyward.db"
token=$("$bin" token create --name bench --role admin --database-url "$db")
KEYWARD_LOG=warn "$bin" serve --listen "127.0.0.1:$kw_port" --database-url "$db" \
  >"$work/keyward.out" 2>"$work/keyward.log" &
pids+=($!)
url="http://127.0.0.1:$kw_port"
for _ in $(seq 1 300); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
auth=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
ks=$(curl -fsS "${auth[@]}" -d '{"name": "Bench", "prefix": "bench"}' "$url/v1/keyspaces" | jq -r .id)
say "creating $BENCH_KEYS keys"
for _ in $(seq 1 "$BENCH_KEYS"); do echo "url = \"$url/v1/keys\""; done >"$work/urls"
body=$(jq -cn --arg ks "$ks" '{keyspace_id: $ks, name: "bench", owner: "team", scopes: ["orders:read"]}')
curl -sS --no-progress-meter --parallel --parallel-max 8 "${auth[@]}" -d "$body" -w '\n' -K "$work/urls" \
  | jq -r 'select(.key != null) | .key' >"$work/keys.txt"
[ "$(wc -l <"$work/keys.txt")" -eq "$BENCH_KEYS" ] || die "not every key was created"

# The documented server block, addresses changed; the same proxy without the check beside it.
python3 - "$work" "$kw_port" "$up_port" "$auth_port" "$plain_port" <<'PY'
import sys, pathlib
work, kw, up, auth, plain = sys.argv[1:]
doc = pathlib.Path("docs/proxies.md").read_text()
start = doc.index("```nginx\n", doc.index("## nginx")) + len("```nginx\n")
block = doc[start:doc.index("```", start)]
for old, new in [("listen 443 ssl;", f"listen 127.0.0.1:{auth};"),
                 ("server 127.0.0.1:8080;", f"server 127.0.0.1:{kw};"),
                 ("http://127.0.0.1:9000;", f"http://127.0.0.1:{up};")]:
    assert old in block, old
    block = block.replace(old, new)
conf = f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{plain}; location / {{ proxy_pass http://127.0.0.1:{up}; }} }}
{block}
}}
"""
pathlib.Path(work, "nginx.conf").write_text(conf)
PY
nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$plain_port/" 2>/dev/null && break; sleep 0.1; done
k=$(head -n1 "$work/keys.txt")
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $k" "http://127.0.0.1:$auth_port/orders/1")
[ "$code" = 200 ] || die "a valid key through nginx got $code ($(cat "$work/nginx-error.log"))"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$auth_port/orders/1")
[ "$code" = 401 ] || die "no key through nginx got $code"

run() {
  wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency \
    -s scripts/bench-http.lua "$1" -- "$work/keys.txt" proxied | grep '^RESULT'
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); nginx $(nginx -v 2>&1 | sed 's/.*\///')"
echo "load: wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION --latency; $BENCH_KEYS keys; one nginx worker"
run "http://127.0.0.1:$auth_port" >/dev/null  # warm-up: every key cached
for round in $(seq 1 "$BENCH_ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then a=$(run "http://127.0.0.1:$auth_port"); p=$(run "http://127.0.0.1:$plain_port")
  else p=$(run "http://127.0.0.1:$plain_port"); a=$(run "http://127.0.0.1:$auth_port"); fi
  printf 'round %d\n  nginx alone          %8.0f req/s   p50 %5.0f us   p99 %5.0f us   non-2xx %d\n' "$round" \
    "$(field rps "$p")" "$(field p50_us "$p")" "$(field p99_us "$p")" "$(field non2xx "$p")"
  printf '  nginx + forward-auth %8.0f req/s   p50 %5.0f us   p99 %5.0f us   non-2xx %d\n' \
    "$(field rps "$a")" "$(field p50_us "$a")" "$(field p99_us "$a")" "$(field non2xx "$a")"
  printf '  forward-auth / alone = %.1f%% of the requests per second\n' "$(calc "$(field rps "$a") / $(field rps "$p") * 100")"
done
