#!/usr/bin/env bash
# Where the tail below saturation comes from: cloudmap-dns and its peer (NSD for zone answers,
# Unbound for forwarded hits), both pinned to CPU 0, each loaded alone at one rate, then the two
# in turns of each of TURNS ms (20: half-load.sh's arrangement), RUNS rounds of them all.
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/tail.sh                       # RUNS=3 DURATION=8 WORKLOADS="srv fwd-a nx" TURNS="20 200"
#
# Workloads as in half-load.sh (a, srv, nx: NSD; fwd-a: Unbound). The rate is half of the slower
# server's saturation (5 s each, 200 queries in flight), the same for both. A tail that a server
# makes itself (its batching, a thread of its own, its start after an idle turn) shows in every
# arrangement; one that the machine makes (a stall of CPU 0, or of the generator's CPU 1) moves
# from run to run and from server to server. Per run: CPU 0's steal (ms) and the generator's
# largest backlog (max_owed: queries it was late to send, so a burst when it caught up); and its
# answers of 0.5 ms or more (loadgen's LOADGEN_SLOW), how many came in bursts (100 or more sent
# with no gap of 2 ms: a stall) and what share of them: scattered slow answers are a server's own
# cost. Last, each server's runs pooled per arrangement: percentiles over all their queries.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WORKLOADS=${WORKLOADS:-srv fwd-a nx}
TURNS=${TURNS:-20 200}

# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
server_settings
start_servers
await_servers
slow=$WORK/slow # each run's slow answers, one file per server, overwritten by the next run
mkdir -p "$slow"

echo "# tail $(date -u +%FT%TZ), cloudmap-dns $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), runs=$RUNS duration=${DURATION}s"
printf '| workload | rate | run | arrangement | server | lost | steal ms | max_owed | p50 ms | p90 ms | p99 ms | p99 lost=late ms | p99.9 ms | answers >= 0.5 ms | bursts | in bursts |\n'
printf '|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
# A server's slow answers (`SENT_US LATENCY_US` lines): how many, the bursts among them (100 or
# more, each sent within 2 ms of the one before), and the share of the answers in them.
bursts() { # slow-file
    sort -n "$1" | awk '
        NR > 1 && $1 - last < 2000 { n++; last = $1; next }
        { if (n >= 100) { b++; in_b += n } n = 1; last = $1 }
        END { if (n >= 100) { b++; in_b += n } printf "%d | %d | %.0f%%", NR, b, NR ? 100 * in_b / NR : 0 }'
}
row() { # workload rate run arrangement name steal line slow-file
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" \
        "$(echo "$7" | field lost)" "$6" "$(echo "$7" | field max_owed)" "$(echo "$7" | field p50_ms)" \
        "$(echo "$7" | field p90_ms)" "$(echo "$7" | field p99_ms)" "$(echo "$7" | field p99_sent_ms)" \
        "$(echo "$7" | field p999_ms)" "$(bursts "$8")"
}
for wl in $WORKLOADS; do
    case "$wl" in
    a | srv | nx) servers="nsd:$NSD_PORT cloudmap-dns:$CM_PORT" ;;
    fwd-a) servers="unbound:$UB_PORT cloudmap-dns:$CMF_PORT" ;;
    *) echo "unknown workload $wl (a, srv, nx, fwd-a)" >&2; exit 2 ;;
    esac
    rate= addrs=
    for s in $servers; do
        port=${s##*:}
        "$LOADGEN" "127.0.0.1:$port" "$(queries "$wl" max 2)" 2 max "$LOAD_CPU" >/dev/null # warm-up
        half=$(($("$LOADGEN" "127.0.0.1:$port" "$(queries "$wl" max 5)" 5 max "$LOAD_CPU" | field qps) / 2))
        [ -z "$rate" ] || [ "$half" -lt "$rate" ] && rate=$half
        addrs=$addrs${addrs:+,}127.0.0.1:$port
    done
    for run in $(seq "$RUNS"); do
        for s in $servers; do
            name=${s%%:*} pool=$WORK/pool/$wl/alone && mkdir -p "$pool"
            s0=$(steal_ms)
            line=$(LOADGEN_POOL=$pool LOADGEN_SLOW=$slow "$LOADGEN" "127.0.0.1:${s##*:}" "$(queries "$wl" "$rate" "$DURATION")" \
                "$DURATION" "$rate" "$LOAD_CPU")
            row "$wl" "$rate" "$run" alone "$name" $(($(steal_ms) - s0)) "$line" "$slow/127.0.0.1:${s##*:}.slow"
        done
        for turn in $TURNS; do
            pool=$WORK/pool/$wl/turns$turn && mkdir -p "$pool"
            s0=$(steal_ms)
            out=$(LOADGEN_POOL=$pool LOADGEN_SLOW=$slow "$LOADGEN" "$addrs" "$(queries "$wl" "$rate" "$DURATION")" \
                "$DURATION" "$rate" "$LOAD_CPU" "$turn")
            steal=$(($(steal_ms) - s0))
            for s in $servers; do
                row "$wl" "$rate" "$run" "turns of $turn ms" "${s%%:*}" "$steal" \
                    "$(echo "$out" | grep "^server 127.0.0.1:${s##*:} ")" "$slow/127.0.0.1:${s##*:}.slow"
            done
        done
    done
done
echo
echo "Pooled over the $RUNS runs of each arrangement:"
echo
printf '| workload | arrangement | server | queries | lost | p50 ms | p90 ms | p99 ms | p99 lost=late ms | p99.9 ms |\n'
printf '|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n'
for wl in $WORKLOADS; do
    for arr in alone $(printf 'turns%s ' $TURNS); do
        for s in nsd:$NSD_PORT unbound:$UB_PORT cloudmap-dns:$CM_PORT cloudmap-dns:$CMF_PORT; do
            f=$WORK/pool/$wl/$arr/127.0.0.1:${s##*:}.pool
            [ -e "$f" ] || continue
            line=$("$LOADGEN" pooled "$f")
            label=$arr
            [ "$arr" = alone ] || label="turns of ${arr#turns} ms"
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$wl" "$label" "${s%%:*}" \
                "$(echo "$line" | field sent)" "$(echo "$line" | field lost)" "$(echo "$line" | field p50_ms)" \
                "$(echo "$line" | field p90_ms)" "$(echo "$line" | field p99_ms)" \
                "$(echo "$line" | field p99_sent_ms)" "$(echo "$line" | field p999_ms)"
        done
    done
done
