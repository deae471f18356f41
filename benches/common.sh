# Sourced by the bench scripts (run from the repository root): builds
# tenantgate in release mode (unless SKIP_BUILD is set), and gives them BIN,
# a work folder WORK, and PIDS, whose processes are killed (and WORK
# removed) on exit.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
BIN="${BIN:-$PWD/target/release/tenantgate}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# Waits until 127.0.0.1:$1 accepts connections; exits if process $2 (whose
# log is $3) ends first.
wait_port() {
  until (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || { echo "gateway exited:"; tail "$3"; exit 1; }
    sleep 0.01
  done
}

# Seconds since $1 (a `date +%s.%N` reading), with two decimals.
since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}'; }
