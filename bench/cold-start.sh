#!/usr/bin/env bash
# A start under load: cloudmap-dns over an embedded registry that holds the harness's demo. zone
# (../shared/bench-peers: 1,100 services, 3,200 instances), started pinned to CPU 0 and loaded
# open loop at RATE q/s (the load generator on CPU 1) from the moment it answers the zone's SOA
# (which needs no service), in one-second runs: what a resolver restarted in rotation meets.
# RUNS starts; a line per second (q/s, lost, p50, p99), then the threads the server ended with
# and its DiscoverInstances reads (one per service read, however many queries waited for it).
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/cold-start.sh                 # RUNS=3 LOAD_SECONDS=2 RATE=100000
# CLOUDMAP_DNS_BIN=PATH starts another build over the same data (an A/B of two builds).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
RUNS=${RUNS:-3}
LOAD_SECONDS=${LOAD_SECONDS:-2}
RATE=${RATE:-100000}
PORT=${PORT:-5397}
METRICS_PORT=${METRICS_PORT:-9397}
BIN=${CLOUDMAP_DNS_BIN:-$ROOT/target/release/cloudmap-dns}
LOADGEN=$ROOT/target/release/examples/loadgen

# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
[ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin cloudmap-dns --example load-zone --example loadgen" >&2; exit 1; }
GEN=$WORK/gen
bash "$PEERS/gen-data.sh" "$GEN" >/dev/null

# The data: bench/candidate.sh registers the zone and serves it; once it answers, it is stopped
# and its data directory and configuration are reused by every start.
PERF_PORT=$PORT PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone PERF_RUN_DIR=$WORK/cm \
    launch "$WORK/cm" 0 "$ROOT/bench/candidate.sh"
ready "$PORT" svc0.demo || { cat "$WORK/cm/out" >&2; exit 1; }
kill -TERM -- "-${PIDS[-1]}"
while [ -n "$(port_pids "$PORT")" ]; do sleep 0.1; done

echo "# cold-start $(date -u +%FT%TZ) on $(nproc) CPUs, $("$BIN" --version), rate=$RATE runs=$RUNS"
printf '| start | second | q/s | lost | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|\n'
for run in $(seq "$RUNS"); do
    launch "$WORK/run$run" 0 "$BIN" serve --config "$WORK/cm/cloudmap-dns.toml" --data-dir "$WORK/cm/data" \
        --dns-listen "127.0.0.1:$PORT" --api-listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$METRICS_PORT"
    session=${PIDS[-1]}
    for _ in $(seq 500); do
        dig +tries=1 +time=1 -p "$PORT" @127.0.0.1 demo SOA 2>/dev/null | grep -q 'status: NOERROR' && break
        sleep 0.01
    done
    for second in $(seq "$LOAD_SECONDS"); do
        line=$("$LOADGEN" "127.0.0.1:$PORT" "$GEN/q-demo-a.txt" 1 "$RATE" 1)
        printf '| %s | %s | %s | %s | %s | %s |\n' "$run" "$second" "$(field qps <<<"$line")" \
            "$(field lost <<<"$line")" "$(field p50_ms <<<"$line")" "$(field p99_ms <<<"$line")"
    done
    pid=$(port_pids "$PORT" | head -1)
    reads=$(curl -s "127.0.0.1:$METRICS_PORT/metrics" |
        awk '/^cloudmap_dns_backend_requests_total\{operation="DiscoverInstances"/ { s += $NF } END { printf "%d", s }')
    echo "start $run: $(awk '/^Threads/ { print $2 }' "/proc/$pid/status") threads, $reads DiscoverInstances reads"
    kill -TERM -- "-$session"
    while [ -n "$(port_pids "$PORT")" ]; do sleep 0.1; done
done
