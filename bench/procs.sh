# Sourced by the benchmark scripts: a work directory, and processes launched in their own session
# and pinned to a CPU, all stopped (and the directory removed) when the script exits; the CPU
# time of the server on a port and the queries its sockets dropped; a registry with the demo
# zone for aws-backend servers, and their Cloud Map call count; waiting for a server to answer,
# and reading a field of the load generator's `key value` lines; the hypervisor's steal of the
# server's CPU; the peers' configurations from the harness's templates (workers.sh's NSD too);
# and for half-load.sh and tail.sh, their settings, servers and query files.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT
launch() { # dir cpu command... (output to dir/out)
    local dir=$1 cpu=$2
    shift 2
    mkdir -p "$dir"
    setsid taskset -c "$cpu" "$@" >"$dir/out" 2>&1 &
    PIDS+=($!)
}
# The processes that hold a UDP port (a server's, NSD's several).
port_pids() { # port
    ss -lunpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}
# CPU time (ms) of the processes that hold a UDP port: a server's own, whatever else shares its CPU.
cpu_ms() { # port
    local t=0 p
    for p in $(port_pids "$1"); do
        # utime + stime, counted after the command name (NSD's have spaces in them).
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo $((t * 1000 / $(getconf CLK_TCK)))
}
# A registry (a cloudmap-dns with the embedded backend, pinned to CPU 1) holding the harness's
# demo zone (1,100 services, data in $WORK/gen), and $WORK/aws.toml: the config of an aws-backend
# server against it (refresh 1 s, one UDP worker). Needs ROOT and PEERS.
demo_registry() { # api-port dns-port
    bash "$PEERS/gen-data.sh" "$WORK/gen" >/dev/null
    printf '[dns]\nudp_workers = 1\n[registry.quotas]\ninstances_per_namespace = 100000\n' >"$WORK/reg.toml"
    launch "$WORK/reg" 1 "$ROOT/target/release/cloudmap-dns" serve --config "$WORK/reg.toml" --data-dir "$WORK/reg/data" \
        --metrics-listen 127.0.0.1:0 --api-listen "127.0.0.1:$1" --dns-listen "127.0.0.1:$2" --log-level info
    for _ in $(seq 100); do grep -q "listening for Cloud Map API" "$WORK/reg/out" && break; sleep 0.1; done
    "$ROOT/target/release/examples/load-zone" --endpoint "http://127.0.0.1:$1" zone demo "$WORK/gen/demo.zone" >/dev/null
    printf '[dns]\nudp_workers = 1\n[backend]\nkind = "aws"\nendpoint_url = "http://127.0.0.1:%s"\nrefresh_ms = 1000\nrate_limit = 2500\n[[dns.zones]]\nzone = "demo"\nnamespace = "demo"\n' \
        "$1" >"$WORK/aws.toml"
}
# The Cloud Map calls an aws-backend server has made, from its metrics.
backend_calls() { # metrics-port
    curl -s "127.0.0.1:$1/metrics" | awk '/^cloudmap_dns_backend_requests_total/ { s += $NF } END { printf "%d", s }'
}
# Queries the server's own sockets dropped (receive buffer full), from the kernel's per-socket
# counter: tells loss at the server from loss anywhere else.
drops() { # port
    # Once per socket (inode, field 10): a read of the table in pieces can list one twice.
    awk -v p="$(printf ':%04X' "$1")" '$2 ~ p"$" && !seen[$10]++ { d += $NF } END { print d + 0 }' /proc/net/udp /proc/net/udp6
}
# Waits until the DNS server on 127.0.0.1:port answers `name A` with NOERROR (300 tries, 0.2 s apart).
ready() { # port name
    for _ in $(seq 300); do
        dig +tries=1 +time=1 -p "$1" @127.0.0.1 "$2" A 2>/dev/null | grep -q 'status: NOERROR' && return 0
        sleep 0.2
    done
    return 1
}
# The value after `key` in `key value ...` lines (the load generator's reports).
field() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }'; }
# A peer's configuration from the harness's template (NSD, Unbound) for a run directory and port;
# needs PEERS, GEN (the harness's data) and UP_PORT (the forwarders' upstream).
conf() { # template run-dir port
    sed -e "s|@PORT@|$3|g" -e "s|@RUN@|$2|g" -e "s|@GEN@|$GEN|g" -e "s|@UPSTREAM_PORT@|$UP_PORT|g" "$PEERS/conf/$1"
}
# The query file for a workload; the miss workloads get names never asked before, enough for
# `rate` queries/s (max: 600,000/s) over `seconds`. The prefix is taken from the clock: this runs
# in a subshell, where a counter would not survive, and repeated names would be negative-cache
# hits (up.test's SOA minimum is a day) for a server whose cache holds them all.
queries() { # workload rate seconds
    case "$1" in
    a | srv) echo "$GEN/q-demo-$1.txt" ;;
    fwd-a) echo "$GEN/q-up-a.txt" ;;
    nx | fwd-miss)
        local f=$WORK/q-fresh.txt suffix=demo rate=$2
        [ "$1" = fwd-miss ] && suffix=up.test
        [ "$rate" = max ] && rate=600000
        awk -v n="$(awk -v r="$rate" -v s="$3" 'BEGIN { printf "%d", r * s * 1.1 + 1000 }')" \
            -v p="m$(date +%s%N)" -v z="$suffix" 'BEGIN { for (i = 0; i < n; i++) printf "%s-%d.%s A\n", p, i, z }' >"$f"
        echo "$f"
        ;;
    esac
}
# Time the hypervisor kept the server's CPU (steal, ms): a run it touched shows loss or a tail
# that no server on that CPU could have avoided.
steal_ms() {
    awk -v c="cpu${SRV_CPU:-0}" -v hz="$(getconf CLK_TCK)" '$1 == c { print int($9 * 1000 / hz) }' /proc/stat
}
# What start_servers needs (half-load.sh, tail.sh): its CPUs and ports (each may be set from the
# environment), its tools, the load generator, and the harness's data in GEN. Needs ROOT, PEERS.
server_settings() {
    SRV_CPU=${SRV_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
    NSD_PORT=${NSD_PORT:-5393} CM_PORT=${CM_PORT:-5391} UB_PORT=${UB_PORT:-5394}
    CMF_PORT=${CMF_PORT:-5392} UP_PORT=${UP_PORT:-5395}
    LOADGEN=$ROOT/target/release/examples/loadgen
    local t
    for t in nsd unbound dig taskset setsid; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
    [ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin cloudmap-dns --example load-zone --example loadgen" >&2; exit 1; }
    GEN=$WORK/gen
    bash "$PEERS/gen-data.sh" "$GEN" >/dev/null
}
# The servers half-load.sh and tail.sh compare: NSD serving demo. and Unbound forwarding up.test.
# to a second NSD (on LOAD_CPU), and cloudmap-dns in zone and in fwd mode (bench/candidate.sh);
# all but the upstream on SRV_CPU. Needs GEN and NSD_PORT, UP_PORT, UB_PORT, CM_PORT, CMF_PORT.
start_servers() {
    mkdir -p "$WORK"/{nsd,up,ub,cm,cmf}
    conf nsd.conf.in "$WORK/nsd" "$NSD_PORT" >"$WORK/nsd/nsd.conf"
    launch "$WORK/nsd" "$SRV_CPU" nsd -d -c "$WORK/nsd/nsd.conf"
    conf nsd.conf.in "$WORK/up" "$UP_PORT" >"$WORK/up/nsd.conf"
    launch "$WORK/up" "$LOAD_CPU" nsd -d -c "$WORK/up/nsd.conf"
    conf unbound-common.conf.in "$WORK/ub" "$UB_PORT" >"$WORK/ub/unbound-common.conf"
    conf unbound-fwd.conf.in "$WORK/ub" "$UB_PORT" >"$WORK/ub/unbound.conf"
    launch "$WORK/ub" "$SRV_CPU" unbound -d -c "$WORK/ub/unbound.conf"
    PERF_PORT=$CM_PORT PERF_MODE=zone PERF_ZONE_NAME=demo. PERF_ZONE_FILE=$GEN/demo.zone PERF_RUN_DIR=$WORK/cm \
        launch "$WORK/cm" "$SRV_CPU" "$ROOT/bench/candidate.sh"
    PERF_PORT=$CMF_PORT PERF_MODE=fwd PERF_UPSTREAM=127.0.0.1:$UP_PORT PERF_RUN_DIR=$WORK/cmf \
        launch "$WORK/cmf" "$SRV_CPU" "$ROOT/bench/candidate.sh"
}
# Waits until start_servers' servers, and each `dir:port:name` given, answer; else prints that
# server's output and exits.
await_servers() { # [dir:port:name...]
    local s dir port probe
    for s in nsd:$NSD_PORT:svc0.demo up:$UP_PORT:svc0.up.test ub:$UB_PORT:svc0.up.test \
        cm:$CM_PORT:svc0.demo cmf:$CMF_PORT:svc0.up.test "$@"; do
        IFS=: read -r dir port probe <<<"$s"
        ready "$port" "$probe" || { echo "$dir did not start" >&2; cat "$WORK/$dir/out" >&2; exit 1; }
    done
}
