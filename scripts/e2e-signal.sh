#!/usr/bin/env bash
# End-to-end test of multi-device envelopes with the official Signal library: starts the debug
# server on a free port of 127.0.0.1 with a fresh database, installs e2e/'s dependencies
# (@signalapp/libsignal-client, ws) from the committed lockfile with `npm ci`, and runs
# e2e/signal-multi-device.mjs against it (Alice sends to Bob's two devices and to her own
# second device; all three decrypt with libsignal; see the script).
#
# Usage: scripts/e2e-signal.sh              against a temporary SQLite database
#        scripts/e2e-signal.sh --postgres   against SQLite, then against a fresh PostgreSQL
#                                           schema (TEST_DATABASE_URL, default
#                                           postgres://postgres@127.0.0.1:5432/test)
# Needs node (20+) and npm; builds the debug binary if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

postgres=0
for arg in "$@"; do
    case "$arg" in
        --postgres) postgres=1 ;;
        *) echo "usage: $0 [--postgres]" >&2; exit 2 ;;
    esac
done

for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "FATAL: $tool is not installed (the Signal end-to-end test needs Node.js 20+ and npm)" >&2
        exit 1
    fi
done
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "FATAL: Node.js $(node --version) is too old (20+ needed)" >&2
    exit 1
fi

# From the lockfile only: a dependency that drifted from it fails here, not later.
npm ci --prefix e2e --no-audit --no-fund --loglevel=error

cargo build --quiet --bin kisse-backend
binary="$(pwd)/target/debug/kisse-backend"
work=$(mktemp -d)
server_pid=""
pg_admin_url=""
pg_schema=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
drop_schema() {
    if [ -n "$pg_schema" ]; then
        psql "$pg_admin_url" -Atqc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $pg_schema CASCADE" >/dev/null || true
        pg_schema=""
    fi
}
cleanup() {
    stop_server
    drop_schema
    rm -rf "$work"
}
trap cleanup EXIT

# run <engine> <database url>: one server, one run of the script.
run() {
    local engine="$1" database_url="$2" port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    (cd "$work" && exec env -i PATH="$PATH" SERVER_ADDRESS="127.0.0.1:$port" \
        DATABASE_URL="$database_url" RUST_LOG=warn \
        "$binary" serve) >"$work/server-$engine.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 300); do
        curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! curl -fsS "http://127.0.0.1:$port/health" >/dev/null; then
        echo "FATAL: the server ($engine) did not come up; its log:" >&2
        cat "$work/server-$engine.log" >&2
        exit 1
    fi
    echo "--- Signal end to end on $engine (server on 127.0.0.1:$port)"
    if ! KISSE_URL="http://127.0.0.1:$port" timeout 90 node e2e/signal-multi-device.mjs; then
        echo "FAIL: Signal end to end on $engine; the server's log (last 40 lines):" >&2
        tail -40 "$work/server-$engine.log" >&2
        exit 1
    fi
    stop_server
}

run sqlite "sqlite://$work/kisse.db"

if [ "$postgres" = 1 ]; then
    # A fresh schema of the test database, as tests/api/common.rs makes them (kt_ prefix: .ci/run
    # drops any an interrupted run leaves behind).
    pg_admin_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
    if ! psql "$pg_admin_url" -Atqc 'SELECT 1' >/dev/null; then
        echo "FATAL: PostgreSQL is unreachable at $pg_admin_url" >&2
        exit 1
    fi
    pg_schema="kt_e2e_$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
    psql "$pg_admin_url" -Atqc "CREATE SCHEMA $pg_schema" >/dev/null
    case "$pg_admin_url" in *\?*) sep='&' ;; *) sep='?' ;; esac
    run postgres "${pg_admin_url}${sep}options=-c%20search_path%3D${pg_schema}"
    drop_schema
fi
echo "Signal end to end passed ($([ "$postgres" = 1 ] && echo "SQLite and PostgreSQL" || echo "SQLite"))"
