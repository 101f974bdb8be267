# Sourced by the benchmark scripts: a work directory, and processes launched in their own session
# and pinned to a CPU, all stopped (and the directory removed) when the script exits; and the CPU
# time of the server on a port.
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
# CPU time (ms) of the processes that hold a UDP port: a server's own, whatever else shares its CPU.
cpu_ms() { # port
    local t=0 p
    for p in $(ss -lunpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
        # utime + stime, counted after the command name (NSD's have spaces in them).
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo $((t * 1000 / $(getconf CLK_TCK)))
}
