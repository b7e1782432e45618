#!/usr/bin/env bash
# Starts the order service with no time or order limit, sends it SIGTERM once it is running, and
# checks that it shut down cleanly: exit status 0, a drained and closed store, and counters that
# reconcile. Usage: sigterm_test.sh <path to example_order_service>
set -euo pipefail

program="$1"
output="$(mktemp)"
pid=""
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$output"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    echo "---- program output ----" >&2
    cat "$output" >&2
    exit 1
}

"$program" --duration-ms 0 >"$output" 2>&1 &
pid=$!

# Its signal handlers are installed once it prints "running" (30 s allows for sanitizers).
for _ in $(seq 300); do
    grep -q '^running' "$output" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
grep -q '^running' "$output" || fail "the program did not start"

sleep 0.5  # let it handle some orders
kill -TERM "$pid"

# It must exit by itself; give it 30 s before calling it a hang.
for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "still running 30 s after SIGTERM"

status=0
wait "$pid" || status=$?
pid=""
cat "$output"

((status == 0)) || fail "exit status $status"
grep -q '^shutdown: received SIGTERM$' "$output" || fail "no 'shutdown: received SIGTERM'"
grep -q '^drained and closed in ' "$output" || fail "no 'drained and closed'"
grep -q '^counters reconcile$' "$output" || fail "no 'counters reconcile'"
echo "PASS: stopped by SIGTERM, drained, exited 0, counters reconcile"
