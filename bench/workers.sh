#!/usr/bin/env bash
# One UDP worker against two, by `dns.udp_steering` and `dns.udp_scheduling`, on the harness's
# demo. zone (../shared/bench-peers: 1,000 names x 3 A), in one run (bench/README.md, *Multi-core*).
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/workers.sh                 # ROUNDS=8 SECONDS_EACH=5 RATE=120000 LAT_RUNS=4
#
# Five cloudmap-dns servers (1 and 2 workers under the defaults, steering by CPU; 2 workers
# steered by the kernel's hash under each scheduling policy, normal and batch; and a second
# 1-worker server, the control: two identical servers, whose ratio is this machine's noise), and
# NSD, the peer, with one server process and with two (`server-count: 2`, `reuseport: yes`: a
# socket each), all free to run on both CPUs, as a server with two workers on a two-core host
# would be.
# Saturation: ROUNDS rounds, the servers in turns (each round starting one further along, so
# that none always follows the same one), each loaded SECONDS_EACH s closed loop (200 queries in
# flight) by the generator, also unpinned; q/s, the server's CPU per query, and its threads'
# context switches per query; medians, and each against its own kind with one worker (one NSD
# process): the ratio of their medians, and the median and range of the rounds' ratios.
# Latency: LAT_RUNS runs open loop at RATE q/s, the generator pinned to CPU 1 and loading the
# servers in 20 ms turns; percentiles pooled over every query of a server's runs. On a two-core
# machine the generator shares a core with a second busy worker: that, not the server, is what
# the policies differ in here, and what NSD's two processes meet too. Steered by CPU, the
# generator's queries (all received on its CPU, loopback) go to one worker, and the other sleeps.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
LOADGEN=$ROOT/target/release/examples/loadgen
ROUNDS=${ROUNDS:-8}
SECONDS_EACH=${SECONDS_EACH:-5}
RATE=${RATE:-120000}
LAT_RUNS=${LAT_RUNS:-4}
BASE_PORT=${BASE_PORT:-5381}
for t in dig nsd taskset setsid ss; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin cloudmap-dns --example load-zone --example loadgen" >&2; exit 1; }

# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
GEN=$WORK/gen
bash "$PEERS/gen-data.sh" "$GEN" >/dev/null
QUERIES=$GEN/q-demo-a.txt

# Each: its name in the tables, and the index of the server its ratio is taken against.
SERVERS=("1 normal" "2 normal" "2 normal hash" "2 batch hash" "1 normal control" "NSD, 1 process" "NSD, 2 processes")
BASE=(0 0 0 0 0 5 5)
for i in "${!SERVERS[@]}"; do
    case ${SERVERS[$i]} in
    NSD*)
        n=${SERVERS[$i]#NSD, } n=${n%% *}
        mkdir -p "$WORK/s$i"
        UP_PORT=0 conf nsd.conf.in "$WORK/s$i" $((BASE_PORT + i)) |
            sed -e "s/server-count: 1/server-count: $n/" -e "s/reuseport: no/reuseport: $([ "$n" -gt 1 ] && echo yes || echo no)/" \
                >"$WORK/s$i/nsd.conf"
        launch "$WORK/s$i" 0,1 nsd -d -c "$WORK/s$i/nsd.conf"
        ;;
    *)
        read -r workers policy steering <<<"${SERVERS[$i]}"
        [ "$steering" = hash ] || steering=cpu
        CLOUDMAP_DNS_UDP_WORKERS=$workers CLOUDMAP_DNS_UDP_SCHEDULING=$policy CLOUDMAP_DNS_UDP_STEERING=$steering PERF_PORT=$((BASE_PORT + i)) \
            PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone PERF_RUN_DIR=$WORK/s$i \
            launch "$WORK/s$i" 0,1 "$ROOT/bench/candidate.sh"
        ;;
    esac
done
for i in "${!SERVERS[@]}"; do
    ready $((BASE_PORT + i)) svc0.demo || { echo "server ${SERVERS[$i]} did not start" >&2; cat "$WORK/s$i/out" >&2; exit 1; }
done

# Context switches of the threads that read the UDP sockets of the server that holds a port:
# cloudmap-dns's dns-udp threads (its other threads come and go, tokio's blocking pool, and
# would take their counts with them), NSD's server processes (one thread each).
switches() { # port
    local n=0 p t
    for p in $(port_pids "$1"); do
        for t in /proc/"$p"/task/*; do
            case $(cat "$t/comm" 2>/dev/null) in dns-udp | "nsd: server"*) ;; *) continue ;; esac
            n=$((n + $(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status" 2>/dev/null || echo 0)))
        done
    done
    echo "$n"
}

echo "cloudmap-dns $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%F %H:%M') UTC, $(nproc) CPUs"
ROWS=$WORK/rows
N=${#SERVERS[@]}
for r in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((N - 1))); do
        i=$(((k + r - 1) % N))
        port=$((BASE_PORT + i))
        c0=$(cpu_ms $port) s0=$(switches $port)
        out=$("$LOADGEN" 127.0.0.1:$port "$QUERIES" "$SECONDS_EACH" max)
        c1=$(cpu_ms $port) s1=$(switches $port)
        qps=$(field qps <<<"$out") lost=$(field lost <<<"$out")
        # A row: round, server index, q/s, us of CPU per query, context switches per query.
        awk -v r="$r" -v i="$i" -v q="$qps" -v c=$((c1 - c0)) -v n=$((s1 - s0)) -v t="$SECONDS_EACH" \
            'BEGIN { printf "%d %d %.0f %.3f %.5f\n", r, i, q, c * 1000 / (q * t), n / (q * t) }' >>"$ROWS"
        read -r _ _ q c n < <(tail -n 1 "$ROWS")
        printf 'round %d  %-16s  %s q/s  %s us/q  %s switches/q  lost %s\n' "$r" "${SERVERS[$i]}" "$q" "$c" "$n" "$lost"
    done
done
echo
echo "| server | q/s, median (range) | CPU per query | context switches per query | vs 1 worker (process): medians | same round: median (range) |"
echo "|---|---|---|---|---|---|"
names=$(printf '%s;' "${SERVERS[@]}") bases="${BASE[*]}"
awk -v names="${names%;}" -v bases="$bases" '
    function median(list,   a, m, i, j, t) {
        m = split(list, a, " ")
        for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        lo = a[1]; hi = a[m]
        return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    { q[$2] = q[$2] " " $3; c[$2] = c[$2] " " $4; s[$2] = s[$2] " " $5; at[$1, $2] = $3; rounds[$1] = 1 }
    END {
        n = split(names, name, ";"); split(bases, base, " ")
        for (i = 0; i < n; i++) {
            ratios = ""; b = base[i + 1]
            for (r in rounds) if (at[r, b] > 0) ratios = ratios " " at[r, i] / at[r, b]
            mr = median(ratios); rl = lo; rh = hi
            mq = median(q[i]); ql = lo; qh = hi
            mc = median(c[i]); ms = median(s[i]); mb = median(q[b])
            printf "| %s | %.0f (%.0f-%.0f) | %.2f us | %.4f | %.3f | %.3f (%.3f-%.3f) |\n", name[i + 1], mq, ql, qh, mc, ms, mq / mb, mr, rl, rh
        }
    }' "$ROWS"

echo
mkdir -p "$WORK/pool"
targets=$(for i in "${!SERVERS[@]}"; do printf '127.0.0.1:%d,' $((BASE_PORT + i)); done)
for _ in $(seq "$LAT_RUNS"); do
    LOADGEN_POOL=$WORK/pool "$LOADGEN" "${targets%,}" "$QUERIES" 6 "$RATE" 1 >/dev/null
done
echo "| server | at $RATE q/s: sent | lost | p50 ms | p90 | p99 | p99.9 |"
echo "|---|---|---|---|---|---|---|"
for i in "${!SERVERS[@]}"; do
    line=$("$LOADGEN" pooled "$WORK/pool/127.0.0.1:$((BASE_PORT + i)).pool")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${SERVERS[$i]}" "$(field sent <<<"$line")" "$(field lost <<<"$line")" \
        "$(field p50_ms <<<"$line")" "$(field p90_ms <<<"$line")" "$(field p99_ms <<<"$line")" "$(field p999_ms <<<"$line")"
done
