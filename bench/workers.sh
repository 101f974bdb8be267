#!/usr/bin/env bash
# One UDP worker against two, under each `dns.udp_scheduling`, on the harness's demo. zone
# (../shared/bench-peers: 1,000 names x 3 A), in one run (bench/README.md, *Multi-core*).
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/workers.sh                 # ROUNDS=8 SECONDS_EACH=5 RATE=120000 LAT_RUNS=4
#
# Four servers (1 and 2 workers, normal and batch), all free to run on both CPUs, as a server
# with two workers on a two-core host would be. Saturation: ROUNDS rounds, the servers in turns,
# each loaded SECONDS_EACH s closed loop (200 queries in flight) by the generator, also unpinned;
# q/s, the server's CPU per query, and its threads' context switches per query; medians, and
# each against 1 worker under the normal policy. Latency: LAT_RUNS runs open loop at RATE q/s,
# the generator pinned to CPU 1 and loading the servers in 20 ms turns; percentiles pooled over
# every query of a server's runs. On a two-core machine the generator shares a core with the
# second worker's thread: that, not the server, is what the policies differ in here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
LOADGEN=$ROOT/target/release/examples/loadgen
ROUNDS=${ROUNDS:-8}
SECONDS_EACH=${SECONDS_EACH:-5}
RATE=${RATE:-120000}
LAT_RUNS=${LAT_RUNS:-4}
BASE_PORT=${BASE_PORT:-5381}
for t in dig taskset setsid ss; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin cloudmap-dns --example load-zone --example loadgen" >&2; exit 1; }

# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
GEN=$WORK/gen
bash "$PEERS/gen-data.sh" "$GEN" >/dev/null
QUERIES=$GEN/q-demo-a.txt

SERVERS=("1 normal" "2 normal" "1 batch" "2 batch")
for i in "${!SERVERS[@]}"; do
    read -r workers policy <<<"${SERVERS[$i]}"
    CLOUDMAP_DNS_UDP_WORKERS=$workers CLOUDMAP_DNS_UDP_SCHEDULING=$policy PERF_PORT=$((BASE_PORT + i)) \
        PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone PERF_RUN_DIR=$WORK/s$i \
        launch "$WORK/s$i" 0,1 "$ROOT/bench/candidate.sh"
done
for i in "${!SERVERS[@]}"; do
    ready $((BASE_PORT + i)) svc0.demo || { echo "server ${SERVERS[$i]} did not start" >&2; cat "$WORK/s$i/out" >&2; exit 1; }
done

# Context switches of the threads of the processes that hold a UDP port.
switches() { # port
    local n=0 p
    for p in $(ss -lunpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
        n=$((n + $(cat /proc/"$p"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')))
    done
    echo "$n"
}

echo "cloudmap-dns $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%F %H:%M') UTC, $(nproc) CPUs"
ROWS=$WORK/rows
for r in $(seq "$ROUNDS"); do
    for i in "${!SERVERS[@]}"; do
        port=$((BASE_PORT + i))
        c0=$(cpu_ms $port) s0=$(switches $port)
        out=$("$LOADGEN" 127.0.0.1:$port "$QUERIES" "$SECONDS_EACH" max)
        c1=$(cpu_ms $port) s1=$(switches $port)
        qps=$(field qps <<<"$out") lost=$(field lost <<<"$out")
        awk -v r="$r" -v s="${SERVERS[$i]}" -v q="$qps" -v c=$((c1 - c0)) -v n=$((s1 - s0)) -v t="$SECONDS_EACH" -v l="$lost" \
            'BEGIN { printf "round %d  %s  %.0f q/s  %.2f us/q  %.4f switches/q  lost %s\n", r, s, q, c * 1000 / (q * t), n / (q * t), l }' |
            tee -a "$ROWS"
    done
done
echo
echo "| workers, udp_scheduling | q/s, median (range) | CPU per query | context switches per query | vs 1, normal |"
echo "|---|---|---|---|---|"
awk '{ k = $3 " " $4; q[k] = q[k] " " $5; c[k] = c[k] " " $7; s[k] = s[k] " " $9; if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
    function median(list,   a, m, i, j, t) {
        m = split(list, a, " ")
        for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        lo = a[1]; hi = a[m]
        return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; mq = median(q[k]); l = lo; h = hi
            if (i == 1) base = mq
            printf "| %s | %.0f (%.0f-%.0f) | %.2f us | %.4f | %.3f |\n", k, mq, l, h, median(c[k]), median(s[k]), mq / base
        }
    }' "$ROWS"

echo
mkdir -p "$WORK/pool"
targets=$(for i in "${!SERVERS[@]}"; do printf '127.0.0.1:%d,' $((BASE_PORT + i)); done)
for _ in $(seq "$LAT_RUNS"); do
    LOADGEN_POOL=$WORK/pool "$LOADGEN" "${targets%,}" "$QUERIES" 6 "$RATE" 1 >/dev/null
done
echo "| workers, udp_scheduling | at $RATE q/s: sent | lost | p50 ms | p90 | p99 | p99.9 |"
echo "|---|---|---|---|---|---|---|"
for i in "${!SERVERS[@]}"; do
    line=$("$LOADGEN" pooled "$WORK/pool/127.0.0.1:$((BASE_PORT + i)).pool")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${SERVERS[$i]}" "$(field sent <<<"$line")" "$(field lost <<<"$line")" \
        "$(field p50_ms <<<"$line")" "$(field p90_ms <<<"$line")" "$(field p99_ms <<<"$line")" "$(field p999_ms <<<"$line")"
done
