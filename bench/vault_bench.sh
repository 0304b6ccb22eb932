#!/usr/bin/env bash
# Load benchmark of the embedded vault: GET secret and RSA-2048 unwrapkey at 64 concurrent HTTPS
# clients (wrk, keep-alive), on this machine. Prints requests/s and p99 and the ratio to the goals
# (10k GET/s, 1.5k unwraps/s, p99 under 10 ms on 2 cores).
# Usage: [DISKSEAL_BIN=path] [BENCH_THREADS=n] bench/vault_bench.sh [seconds per run, default 10] [connections, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
bin=${DISKSEAL_BIN:-build/diskseal}  # DISKSEAL_BIN: compare another build (e.g. main's)
[ -x "$bin" ] || { echo "build first: scripts/build" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk missing: scripts/setup installs it" >&2; exit 1; }

work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin" vault serve --dir "$work/v" --listen 127.0.0.1:0 --port-file "$work/port" \
  --threads "${BENCH_THREADS:-$((conns + 16))}" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 500); do [ -s "$work/port" ] && break; sleep 0.02; done
port=$(cat "$work/port")
url=https://127.0.0.1:$port
"$bin" vault token create --dir "$work/v" --name bench --allow all --out "$work/token"
conn=(--vault "$url" --vault-token-file "$work/token" --vault-ca "$work/v/ca.pem")
printf 'bench-secret-value-0123456789' | "$bin" vault secret set bench "${conn[@]}" >/dev/null
"$bin" vault key create kek "${conn[@]}" >/dev/null
wrapped=$(printf 'volume passphrase of 48 characters, base64url....' | "$bin" vault key wrap kek "${conn[@]}")
token=$(cat "$work/token")

cat >"$work/unwrap.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"alg":"RSA-OAEP","value":"$wrapped"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# The server's CPU seconds so far (user + system): on a shared machine requests per CPU-second
# compares servers fairly where requests/s depends on how many threads compete for the cores.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server/stat"; }

run() {  # name, goal req/s, wrk args...
  local name=$1 goal=$2
  shift 2
  local out rps p99 reqs cpu0 cpu1
  cpu0=$(cpu)
  out=$(wrk --latency -t2 -c"$conns" -d"${secs}s" -H "Authorization: Bearer $token" "$@")
  cpu1=$(cpu)
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  printf '%-22s %10.0f req/s (%.2fx goal %s)   p99 %s (goal 10ms)   %.0f req per server CPU-s%s\n' \
    "$name" "$rps" "$(awk -v a="$rps" -v b="$goal" 'BEGIN {print a / b}')" "$goal" "$p99" \
    "$(awk -v r="$reqs" -v a="$cpu0" -v b="$cpu1" 'BEGIN {print (b > a) ? r / (b - a) : 0}')" \
    "${errs:+   $errs}"
}

echo "vault benchmark: $(nproc) cores, $conns connections, ${secs}s per run, wrk over TLS 1.3"
run "GET secret" 10000 "$url/secrets/bench?api-version=7.4"
run "unwrapkey RSA-2048" 1500 -s "$work/unwrap.lua" "$url/keys/kek/unwrapkey?api-version=7.4"
