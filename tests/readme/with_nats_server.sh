#!/usr/bin/env bash
# with_nats_server.sh <nats-server> <program> [args...]: runs the program with NATS_URL set to a
# nats-server started for it with JetStream on 127.0.0.1, a free port and a temporary store, and
# stops the server afterwards. README.md's programs that include eventbus/nats.hpp run this way.
set -euo pipefail
server="$1"
shift
dir="$(mktemp -d /tmp/eventbus-readme-nats-XXXXXX)"
pid=""
cleanup() {
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$server" -a 127.0.0.1 -p "$port" -js -sd "$dir/store" >"$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: nats-server did not start:" >&2
        cat "$dir/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
NATS_URL="nats://127.0.0.1:$port" "$@"
