#!/usr/bin/env bash
# Latency and loss at half of saturation: cloudmap-dns beside NSD, in one run, on the harness's
# data (../shared/bench-peers: demo. zone, 1,000 names x 3 A, 100 SRV owners x 2).
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/half-load.sh            # RUNS=3 DURATION=8 by default
#
# Both servers run at once, pinned to CPU 0 (an idle one costs nothing); the load generator
# (bench/loadgen.rs: sendmmsg/recvmmsg, per-query latency) is pinned to CPU 1. For each server
# and workload: its saturation (200 queries in flight, 5 s), then RUNS open-loop runs at half of
# that rate, interleaved between the servers so both see the same machine noise. CPU 0's busy
# share during a run gives queries per server CPU-second.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
LOADGEN=$ROOT/target/release/examples/loadgen
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
SRV_CPU=${SRV_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NSD_PORT=${NSD_PORT:-5393}
CM_PORT=${CM_PORT:-5391}
for t in nsd dig taskset setsid; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin cloudmap-dns --example load-zone --example loadgen" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT
GEN=$WORK/gen
bash "$PEERS/gen-data.sh" "$GEN" >/dev/null

mkdir -p "$WORK/nsd" "$WORK/cm"
sed -e "s|@PORT@|$NSD_PORT|g" -e "s|@RUN@|$WORK/nsd|g" -e "s|@GEN@|$GEN|g" \
    "$PEERS/conf/nsd.conf.in" >"$WORK/nsd/nsd.conf"
setsid taskset -c "$SRV_CPU" nsd -d -c "$WORK/nsd/nsd.conf" >"$WORK/nsd/out" 2>&1 &
PIDS+=($!)
PERF_PORT=$CM_PORT PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone PERF_RUN_DIR=$WORK/cm \
    setsid taskset -c "$SRV_CPU" "$ROOT/bench/candidate.sh" >"$WORK/cm/out" 2>&1 &
PIDS+=($!)

ready() { # port
    for _ in $(seq 300); do
        dig +tries=1 +time=1 -p "$1" @127.0.0.1 svc0.demo A 2>/dev/null | grep -q 'status: NOERROR' && return 0
        sleep 0.2
    done
    return 1
}
ready "$NSD_PORT" || { echo "nsd did not start" >&2; cat "$WORK/nsd/out" >&2; exit 1; }
ready "$CM_PORT" || { echo "cloudmap-dns did not start" >&2; cat "$WORK/cm/out" "$WORK/cm/load.log" >&2; exit 1; }

busy() { awk -v c="cpu$SRV_CPU" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
field() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }'; }

echo "# half-load $(date -u +%FT%TZ) on $(nproc) CPUs, $(nsd -v 2>&1 | head -1), runs=$RUNS duration=${DURATION}s"
printf '| server | workload | saturation q/s | run | q/s | lost | server CPU %% | q per CPU-s | p50 ms | p99 ms | p99.9 ms |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for wl in a srv; do
    qf=$GEN/q-demo-$wl.txt
    declare -A sat=()
    for s in nsd:$NSD_PORT cloudmap-dns:$CM_PORT; do
        name=${s%%:*} port=${s##*:}
        "$LOADGEN" "127.0.0.1:$port" "$qf" 2 max "$LOAD_CPU" >/dev/null # warm-up
        sat[$name]=$("$LOADGEN" "127.0.0.1:$port" "$qf" 5 max "$LOAD_CPU" | field qps)
    done
    for run in $(seq "$RUNS"); do
        for s in nsd:$NSD_PORT cloudmap-dns:$CM_PORT; do
            name=${s%%:*} port=${s##*:}
            rate=$((${sat[$name]} / 2))
            read -r b0 t0 < <(busy)
            out=$("$LOADGEN" "127.0.0.1:$port" "$qf" "$DURATION" "$rate" "$LOAD_CPU")
            read -r b1 t1 < <(busy)
            cpu=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.0f", (t ? 100 * b / t : 0) }')
            qps=$(echo "$out" | field qps)
            per=$(awk -v q="$qps" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? q * 100 / c : 0) }')
            printf '| %s | zone %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$wl" "${sat[$name]}" \
                "$run" "$qps" "$(echo "$out" | field lost)" "$cpu" "$per" \
                "$(echo "$out" | field p50_ms)" "$(echo "$out" | field p99_ms)" "$(echo "$out" | field p999_ms)"
        done
    done
    unset sat
done
