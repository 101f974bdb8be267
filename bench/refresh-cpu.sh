#!/usr/bin/env bash
# CPU per Cloud Map call of the aws backend's refresh, with no DNS load: a cloudmap-dns registry
# (CPU 1) holds the harness's demo zone (1,100 services); an aws-backend cloudmap-dns (CPU 0,
# refresh_ms 1000) is asked for every service once, so all are active; then its process CPU over
# 10 s is divided by the calls its `backend_requests_total` counted.
#
#   cargo build --release --bin cloudmap-dns --example load-zone --example loadgen
#   bench/refresh-cpu.sh [BINARY]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
BIN=${1:-$ROOT/target/release/cloudmap-dns}
REG_API=${REG_API:-5597} REG_DNS=${REG_DNS:-5598} AWS_DNS=${AWS_DNS:-5595} AWS_METRICS=${AWS_METRICS:-5596}
# shellcheck source=bench/procs.sh
. "$ROOT/bench/procs.sh"
demo_registry "$REG_API" "$REG_DNS"
launch "$WORK/aws" 0 env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true TOKIO_WORKER_THREADS=1 "$BIN" serve --config "$WORK/aws.toml" \
    --data-dir "$WORK/aws/data" --metrics-listen "127.0.0.1:$AWS_METRICS" --api-listen 127.0.0.1:0 \
    --dns-listen "127.0.0.1:$AWS_DNS"
sleep 1
for _ in 1 2 3; do
    "$ROOT/target/release/examples/loadgen" "127.0.0.1:$AWS_DNS" "$WORK/gen/q-demo-a.txt" 2 2000 1 >/dev/null
done
sleep 3
c0=$(backend_calls "$AWS_METRICS") t0=$(cpu_ms "$AWS_DNS")
sleep 10
c1=$(backend_calls "$AWS_METRICS") t1=$(cpu_ms "$AWS_DNS")
awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) \
    'BEGIN { printf "calls/s %.0f  CPU per call %.0f us\n", c / 10, (c ? t * 1000 / c : 0) }'
