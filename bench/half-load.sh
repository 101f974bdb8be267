#!/usr/bin/env bash
# Latency and loss below saturation, and misses, with the server pinned: cloudmap-dns beside NSD
# (namespace-zone answers) and Unbound (forwarding), in one run, on the harness's data
# (../shared/bench-peers: demo. zone, 1,000 names x 3 A, 100 SRV owners x 2; up.test. upstream).
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/half-load.sh                  # RUNS=3 DURATION=8 WORKLOADS="a srv nx fwd-a fwd-miss" CONTROL=0
#
# Workloads (each: a peer beside cloudmap-dns):
#   a, srv     cached zone answers, A and SRV                       NSD        | zone mode
#   nx         misses: a new name per query under demo. (NXDOMAIN)   NSD        | zone mode
#   fwd-a      forwarded cache hits (svcN.up.test)                   Unbound    | forward mode
#   fwd-miss   forwarded misses: a new name per query under up.test.,
#              each through to the upstream (NXDOMAIN)               Unbound    | forward mode
# The servers under test run at once, pinned to CPU 0 (an idle one costs nothing); the load
# generator (bench/loadgen.rs: sendmmsg/recvmmsg, per-query latency) and the forwarders' upstream
# (an NSD for up.test.) are pinned to CPU 1. For each workload and server: its saturation (200
# queries in flight, 5 s), then again with the servers in turns (below); then RUNS rounds, each
# loading both servers open loop at half of its own saturation ("half") and at half of the slower
# server's ("common": the same rate for both, the p99 comparison). Within a run the generator loads
# the two in turns of TURN_MS (20) until each has had DURATION seconds, so the hypervisor's steal
# (up to 100 ms at a time here) and every other interruption of CPU 0 falls on both alike; runs of
# seconds back to back did not: one server's run could lose 300 ms to steal and the other's 20.
# Server CPU % is its processes' CPU time over the seconds it was loaded; steal ms is CPU 0's over
# the whole run, both servers' turns. "p99 lost=late" counts every query sent, a lost one as later
# than any answer (inf: over 1% lost): a server that drops what it is late to read sheds its tail. A
# last table pools each server's common-rate runs: percentiles over all their queries. One run's p99
# turns on which server's turns the steal fell in; the pooled one much less. CONTROL=1 adds a second
# cloudmap-dns, the same build, to the zone workloads: how far two copies of one server differ is
# the noise that any comparison here has to exceed. CONTROL_BIN=PATH makes that copy another build
# (an A/B of two builds, loaded in turns like the rest).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
TURN_MS=${TURN_MS:-20}
SAT_TURNS=${SAT_TURNS:-10}
WORKLOADS=${WORKLOADS:-a srv nx fwd-a fwd-miss}
CM2_PORT=${CM2_PORT:-5396}
CONTROL=${CONTROL:-0}
CONTROL_BIN=${CONTROL_BIN:-$ROOT/target/release/cloudmap-dns}

# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
server_settings

start_servers
if [ "$CONTROL" = 1 ]; then
    CLOUDMAP_DNS_BIN=$CONTROL_BIN PERF_PORT=$CM2_PORT PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone \
        PERF_RUN_DIR=$WORK/cm2 launch "$WORK/cm2" "$SRV_CPU" "$ROOT/bench/candidate.sh"
fi
# shellcheck disable=SC2046 # the control copy, when there is one
await_servers $([ "$CONTROL" = 1 ] && echo cm2:$CM2_PORT:svc0.demo)

load() { # port workload seconds rate
    "$LOADGEN" "127.0.0.1:$1" "$(queries "$2" "$4" "$3")" "$3" "$4" "$LOAD_CPU"
}

echo "# half-load $(date -u +%FT%TZ) on $(nproc) CPUs, $(nsd -v 2>&1 | head -1), $(unbound -V | head -1), runs=$RUNS duration=${DURATION}s"
printf '| server | workload | saturation q/s | load | run | q/s | lost | server drops | wrong | server CPU %% | steal ms | q per CPU-s | p50 ms | p99 ms | p99 lost=late ms | p99.9 ms |\n'
printf '|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for wl in $WORKLOADS; do
    case "$wl" in
    a | srv | nx)
        servers="nsd:$NSD_PORT cloudmap-dns:$CM_PORT"
        [ "$CONTROL" = 1 ] && servers="$servers cloudmap-dns-copy:$CM2_PORT"
        ;;
    fwd-a | fwd-miss) servers="unbound:$UB_PORT cloudmap-dns:$CMF_PORT" ;;
    *) echo "unknown workload $wl" >&2; exit 2 ;;
    esac
    declare -A sat=()
    common=
    for s in $servers; do
        name=${s%%:*} port=${s##*:}
        load "$port" "$wl" 2 max >/dev/null # warm-up (fills the forwarders' caches for fwd-a)
        sat[$name]=$(load "$port" "$wl" 5 max | field qps)
        half=$((${sat[$name]} / 2))
        [ -z "$common" ] || [ "$half" -lt "$common" ] && common=$half
    done
    # Saturation again, the servers loaded in turns of TURN_MS until each has had SAT_TURNS
    # seconds: the readings above are seconds apart, and the machine's speed drifts between them
    # by more than the servers differ; in turns the drift falls on all alike.
    addrs=
    for s in $servers; do addrs=$addrs${addrs:+,}127.0.0.1:${s##*:}; done
    out=$("$LOADGEN" "$addrs" "$(queries "$wl" max "$SAT_TURNS")" "$SAT_TURNS" max "$LOAD_CPU" "$TURN_MS")
    first=
    for s in $servers; do
        name=${s%%:*} qps=$(echo "$out" | grep "^server 127.0.0.1:${s##*:} " | field qps)
        [ -n "$first" ] || first=$qps
        awk -v n="$name" -v w="$wl" -v q="$qps" -v f="$first" \
            'BEGIN { printf "| %s | %s | %s | %.2f |\n", w, n, q, (f > 0 ? q / f : 0) }' >>"$WORK/turns.md"
    done
    for run in $(seq "$RUNS"); do
        for kind in half common; do
            # Both servers in one run, in turns (bench/loadgen.rs).
            addrs= rates= max=0
            declare -A d0=() c0=()
            for s in $servers; do
                name=${s%%:*} port=${s##*:}
                rate=$common
                [ "$kind" = half ] && rate=$((${sat[$name]} / 2))
                addrs=$addrs${addrs:+,}127.0.0.1:$port rates=$rates${rates:+,}$rate
                [ "$rate" -gt "$max" ] && max=$rate
                d0[$name]=$(drops "$port") c0[$name]=$(cpu_ms "$port")
            done
            s0=$(steal_ms)
            pool=
            [ "$kind" = common ] && pool=$WORK/pool/$wl && mkdir -p "$pool"
            out=$(LOADGEN_POOL=$pool "$LOADGEN" "$addrs" "$(queries "$wl" "$max" "$DURATION")" "$DURATION" "$rates" "$LOAD_CPU" "$TURN_MS")
            s1=$(steal_ms)
            for s in $servers; do
                name=${s%%:*} port=${s##*:}
                line=$(echo "$out" | grep "^server 127.0.0.1:$port ")
                rate=$common
                [ "$kind" = half ] && rate=$((${sat[$name]} / 2))
                d1=$(drops "$port") c1=$(cpu_ms "$port")
                # Its process's CPU over the seconds it was loaded (its idle turns cost next to nothing).
                cpu=$(awk -v c=$((c1 - ${c0[$name]})) -v s="$DURATION" 'BEGIN { printf "%.0f", c / (10 * s) }')
                qps=$(echo "$line" | field qps)
                # Wrong: an answer other than the workload's (records; NXDOMAIN for the misses).
                case "$wl" in
                nx | fwd-miss) wrong=$(($(echo "$line" | field received) - $(echo "$line" | field nxdomain))) ;;
                *) wrong=$(($(echo "$line" | field bad) + $(echo "$line" | field nxdomain))) ;;
                esac
                per=$(awk -v q="$qps" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? q * 100 / c : 0) }')
                printf '| %s | %s | %s | %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$wl" \
                    "${sat[$name]}" "$kind" "$rate" "$run" "$qps" "$(echo "$line" | field lost)" $((d1 - ${d0[$name]})) "$wrong" \
                    "$cpu" $((s1 - s0)) "$per" \
                    "$(echo "$line" | field p50_ms)" "$(echo "$line" | field p99_ms)" \
                    "$(echo "$line" | field p99_sent_ms)" "$(echo "$line" | field p999_ms)"
            done
        done
    done
    unset sat
done
echo
echo "Saturation in turns of ${TURN_MS} ms, ${SAT_TURNS} s of load each (200 queries in flight), ratio to the first server:"
echo
printf '| workload | server | q/s | ratio |\n'
printf '|---|---|---:|---:|\n'
cat "$WORK/turns.md"
echo
echo "Pooled over the $RUNS common-rate runs of each workload:"
echo
printf '| server | workload | queries | lost | p50 ms | p99 ms | p99 lost=late ms | p99.9 ms |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|\n'
for wl in $WORKLOADS; do
    for s in nsd:$NSD_PORT unbound:$UB_PORT cloudmap-dns:$CM_PORT cloudmap-dns:$CMF_PORT cloudmap-dns-copy:$CM2_PORT; do
        name=${s%%:*} f=$WORK/pool/$wl/127.0.0.1:${s##*:}.pool
        [ -e "$f" ] || continue
        line=$("$LOADGEN" pooled "$f")
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$wl" "$(echo "$line" | field sent)" \
            "$(echo "$line" | field lost)" "$(echo "$line" | field p50_ms)" "$(echo "$line" | field p99_ms)" \
            "$(echo "$line" | field p99_sent_ms)" "$(echo "$line" | field p999_ms)"
    done
done
