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
