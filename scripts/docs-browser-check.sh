#!/usr/bin/env bash
# Loads the API docs page (/api/docs/) in headless Chromium with the network cut off from
# everything but the local server, and checks that Swagger UI rendered the endpoints: proof
# that the page works offline (every asset is embedded in the binary).
#
# Usage: scripts/docs-browser-check.sh   (builds the debug binary if needed; installs chromium
# with apt-get when it is missing and the script runs as root)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "chromium is missing: installing it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    else
        echo "FATAL: chromium is not installed (apt-get install -y chromium)" >&2
        exit 1
    fi
fi

cargo build --quiet --bin kisse-backend
binary="$(pwd)/target/debug/kisse-backend"
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
(cd "$work" && exec env -i PATH="$PATH" SERVER_ADDRESS="127.0.0.1:$port" \
    DATABASE_URL="sqlite://$work/kisse.db" RUST_LOG=warn \
    "$binary" serve) >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || { cat "$work/server.log"; exit 1; }

# --host-resolver-rules sends every host but 127.0.0.1 nowhere: a CDN asset would fail to load.
dom=$(timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --user-data-dir="$work/chromium" --virtual-time-budget=15000 \
    --dump-dom "http://127.0.0.1:$port/api/docs/" 2>"$work/chromium.log")

fail=0
for expected in "Kisse backend" "/api/auth/register" "/api/conversations/{id}/messages" \
    "/api/keys/{user_id}" "/api/channels/{id}/messages" "/ready" "/metrics" "/ws"; do
    if grep -qF "$expected" <<<"$dom"; then
        echo "ok: docs page shows $expected"
    else
        echo "FAIL: docs page does not show $expected" >&2
        fail=1
    fi
done
if [ "$fail" != 0 ]; then
    echo "--- DOM (first 40 lines)" >&2
    head -40 <<<"$dom" >&2
    exit 1
fi
echo "docs page renders the API offline in headless Chromium"
