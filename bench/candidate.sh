#!/usr/bin/env bash
# cloudmap-dns as the candidate of ../shared/bench-peers/run.sh, for both of its modes:
#   ../shared/bench-peers/run.sh --peers wire-plain,nsd,unbound,candidate \
#       --candidate-name cloudmap-dns --candidate "$PWD/bench/candidate.sh"
# Build first: cargo build --release --bin cloudmap-dns --example load-zone
#
# zone mode: the harness's demo. zone is registered through the Cloud Map API (bench/load_zone.rs)
#   into the embedded registry of a first cloudmap-dns, which is then stopped; the second serves
#   the namespace `demo` (zone demo.) from that data on PERF_PORT. The SRV owners
#   `_sip._udp.svcN` are services of that name.
# fwd mode: forwards everything to PERF_UPSTREAM, caching.
# Reads PERF_PORT, PERF_MODE, PERF_ZONE_NAME, PERF_ZONE_FILE, PERF_UPSTREAM, PERF_RUN_DIR.
# CLOUDMAP_DNS_ARGS adds flags to the serving instance (e.g. --log-level warn).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CLOUDMAP_DNS_BIN:-$ROOT/target/release/cloudmap-dns}
LOADER=${CLOUDMAP_DNS_LOADER:-$ROOT/target/release/examples/load-zone}
DATA=$PERF_RUN_DIR/data
CONF=$PERF_RUN_DIR/cloudmap-dns.toml
# The demo zone holds 3,200 instances: above Cloud Map's default 2,000 per namespace.
# CLOUDMAP_DNS_UDP_WORKERS: UDP sockets (SO_REUSEPORT) per listener; default one per CPU.
# CLOUDMAP_DNS_UDP_SCHEDULING: dns.udp_scheduling, normal (default) or batch.
# CLOUDMAP_DNS_UDP_STEERING: dns.udp_steering, cpu (default) or hash.
printf '[dns]\nudp_workers = %s\nudp_scheduling = "%s"\nudp_steering = "%s"\n[registry.quotas]\ninstances_per_namespace = 100000\n[log]\nlevel = "warn"\n' \
    "${CLOUDMAP_DNS_UDP_WORKERS:-0}" "${CLOUDMAP_DNS_UDP_SCHEDULING:-normal}" "${CLOUDMAP_DNS_UDP_STEERING:-cpu}" >"$CONF"
common=(--config "$CONF" --data-dir "$DATA" --metrics-listen 127.0.0.1:0 --api-listen 127.0.0.1:0)

if [ "$PERF_MODE" = zone ]; then
    log=$PERF_RUN_DIR/load.log
    "$BIN" serve "${common[@]}" --dns-listen 127.0.0.1:0 --log-level info >"$log" 2>&1 &
    loader_server=$!
    api=
    for _ in $(seq 100); do
        api=$(sed -n 's/.*listening for Cloud Map API on \([0-9.:]*\).*/\1/p' "$log" | head -1)
        [ -n "$api" ] && break
        sleep 0.1
    done
    [ -n "$api" ] || { cat "$log" >&2; exit 1; }
    "$LOADER" --endpoint "http://$api" zone "${PERF_ZONE_NAME%.}" "$PERF_ZONE_FILE"
    kill -TERM "$loader_server"
    wait "$loader_server"
    exec "$BIN" serve "${common[@]}" --dns-listen "127.0.0.1:$PERF_PORT" ${CLOUDMAP_DNS_ARGS:-}
else
    exec "$BIN" serve "${common[@]}" --dns-listen "127.0.0.1:$PERF_PORT" --upstream "$PERF_UPSTREAM" \
        ${CLOUDMAP_DNS_ARGS:-}
fi
