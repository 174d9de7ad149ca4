#!/usr/bin/env bash
# Bounded load test of `emotune serve` on loopback: 32 concurrent clients for 30 s with wrk,
# against a one-at-a-time baseline (1 client) in the same run.
# usage: bench/loadtest.sh MODEL [DURATION_S] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/loadtest.sh MODEL [DURATION_S] [CLIENTS]}
duration=${2:-30}
clients=${3:-32}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
bin=target/release/emotune
[ -x "$bin" ] || cargo build --release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --model "$model" --port "$port" --max-concurrent-requests 512 > /tmp/emotune-loadtest.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
lua=$(mktemp --suffix=.lua)
cat > "$lua" <<'LUA'
local texts = {
  "i feel so happy and grateful today",
  "i am furious that they cancelled the trip again",
  "i was terrified walking home alone in the dark",
  "i miss her so much it hurts",
  "i cant believe i won, what a surprise",
  "i love spending quiet evenings with you",
}
local n = 0
request = function()
  n = n + 1
  local body = '{"inputs": "' .. texts[(n % #texts) + 1] .. '"}'
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d rps=%.1f p50_ms=%.1f p99_ms=%.1f\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
echo "one client (one request at a time), ${duration}s:"
wrk -t1 -c1 -d"${duration}s" --timeout 30s -s "$lua" "http://127.0.0.1:$port" | grep RESULT
echo "$clients clients, ${duration}s:"
wrk -t2 -c"$clients" -d"${duration}s" --timeout 30s -s "$lua" "http://127.0.0.1:$port" | grep RESULT
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^emotune_(batches_total|batch_requests_(sum|count)|batch_inputs_(sum|count))'
rm -f "$lua"
