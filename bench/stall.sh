#!/usr/bin/env bash
# Queries lost by an aws-backend server when its core stalls (as when the hypervisor takes it):
# a cloudmap-dns registry (CPU 1) holds the harness's demo zone (1,100 services); an aws-backend
# cloudmap-dns (CPU 0, refresh_ms 1000: ~1,000 Cloud Map calls/s on the same core as its UDP
# thread) takes open-loop load from CPU 1 while the whole process is stopped (SIGSTOP) for
# STALL_MS every PERIOD_MS (STALL_MS=0: never). Stops injected the same way for every build make
# builds comparable where the hypervisor's own steal differs from run to run. Each build gets a
# fresh server per run, in turns; one line per run: its refresh calls/s, the queries dropped at
# its socket, the load's loss and latency.
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/stall.sh [BINARY...]     # RUNS=3 DURATION=8 RATE=116000 STALL_MS=85 PERIOD_MS=1000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
BINS=("${@:-$ROOT/target/release/cloudmap-dns}")
RUNS=${RUNS:-3} DURATION=${DURATION:-8} RATE=${RATE:-116000} STALL_MS=${STALL_MS:-85} PERIOD_MS=${PERIOD_MS:-1000}
REG_API=${REG_API:-5597} REG_DNS=${REG_DNS:-5598} AWS_DNS=${AWS_DNS:-5595} AWS_METRICS=${AWS_METRICS:-5596}
LOADGEN=$ROOT/target/release/examples/loadgen
# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
demo_registry "$REG_API" "$REG_DNS"
stall=$(awk -v m="$STALL_MS" 'BEGIN { print m / 1000 }')
rest=$(awk -v p="$PERIOD_MS" -v m="$STALL_MS" 'BEGIN { print (p - m) / 1000 }')
echo "# stall $(date -u +%FT%TZ): ${RATE} q/s, the server stopped ${STALL_MS} ms every ${PERIOD_MS} ms, ${DURATION} s per run"
for run in $(seq "$RUNS"); do
    for bin in "${BINS[@]}"; do
        rm -rf "$WORK/aws" && mkdir -p "$WORK/aws"
        setsid taskset -c 0 env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
            AWS_EC2_METADATA_DISABLED=true TOKIO_WORKER_THREADS=1 "$bin" serve --config "$WORK/aws.toml" \
            --data-dir "$WORK/aws/data" --metrics-listen "127.0.0.1:$AWS_METRICS" --api-listen 127.0.0.1:0 \
            --dns-listen "127.0.0.1:$AWS_DNS" >"$WORK/aws/out" 2>&1 &
        pid=$!
        sleep 1
        # Every service asked for: all of them refreshed from now on.
        for _ in 1 2 3; do "$LOADGEN" "127.0.0.1:$AWS_DNS" "$WORK/gen/q-demo-a.txt" 2 2000 1 >/dev/null; done
        sleep 3
        c0=$(backend_calls "$AWS_METRICS") d0=$(drops "$AWS_DNS")
        stopper=
        if [ "$STALL_MS" -gt 0 ]; then
            (
                sleep 0.3
                while true; do
                    kill -STOP -- "-$pid"
                    sleep "$stall"
                    kill -CONT -- "-$pid"
                    sleep "$rest"
                done
            ) &
            stopper=$!
        fi
        out=$("$LOADGEN" "127.0.0.1:$AWS_DNS" "$WORK/gen/q-demo-a.txt" "$DURATION" "$RATE" 1)
        if [ -n "$stopper" ]; then
            kill "$stopper" 2>/dev/null || true
            wait "$stopper" 2>/dev/null || true
        fi
        kill -CONT -- "-$pid" 2>/dev/null || true
        c1=$(backend_calls "$AWS_METRICS") d1=$(drops "$AWS_DNS")
        echo "run $run $bin: refresh calls/s $(((c1 - c0) / DURATION)), dropped at the server $((d1 - d0)), load: q/s $(echo "$out" | field qps) lost $(echo "$out" | field lost) p99 ms $(echo "$out" | field p99_ms) p99.9 ms $(echo "$out" | field p999_ms)"
        kill -TERM -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
