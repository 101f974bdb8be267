# Sourced by the benchmark scripts: a work directory, and processes launched in their own session
# and pinned to a CPU, all stopped (and the directory removed) when the script exits.
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
