#!/usr/bin/env bash
# Checks that the server and its OpenAPI document agree, as judged by a tool we did not write:
# schemathesis (`--checks all`) against /api/openapi.json of the real server (debug build, temp
# SQLite database, ephemeral port), authenticated as a freshly registered user.
#
# Excluded: the operations that end the session under test (POST /api/auth/logout, POST
# /api/auth/logout-all, POST /api/auth/password, DELETE /api/auth/me). Run, they revoke the token
# every other request is made with, and every later answer would be a 401. Also GET /ws: a
# WebSocket upgrade, which schemathesis does not speak (its frames are in /api/asyncapi.json).
# The rules JSON Schema cannot state (a hash that must match the content, ...) are listed in
# scripts/schemathesis.toml.
#
# schemathesis is installed from PyPI at the exact versions of scripts/api-contract-requirements.txt,
# in a virtualenv under target/ (reused while the pins do not change). Any failure, or a failed
# install, exits non-zero.
#
# Usage: scripts/api-contract-check.sh   (SCHEMATHESIS_MAX_EXAMPLES, SCHEMATHESIS_SEED to tune)
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=scripts/api-contract-requirements.txt
venv="$(pwd)/target/api-contract-venv"
stamp="$venv/.requirements"
if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    echo "installing schemathesis ($(tr '\n' ' ' <"$requirements"))"
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "FATAL: cannot create a Python virtualenv" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" \
        || { echo "FATAL: cannot install schemathesis from PyPI" >&2; exit 1; }
    cp "$requirements" "$stamp"
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
base="http://127.0.0.1:$port"
(cd "$work" && exec env -i PATH="$PATH" SERVER_ADDRESS="127.0.0.1:$port" \
    DATABASE_URL="sqlite://$work/kisse.db" RUST_LOG=warn \
    "$binary" serve) >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -fsS "$base/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$base/health" >/dev/null || { cat "$work/server.log"; exit 1; }

token=$(curl -fsS -X POST "$base/api/auth/register" -H 'Content-Type: application/json' \
    -d '{"email":"contract@example.com","username":"contract_check","password":"correct horse battery"}' \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

status=0
# Run from the temporary directory: schemathesis keeps a cache in its working directory. One
# worker: with two, Python 3.11's parser (which schemathesis calls while generating) stopped
# the run once with "AST constructor recursion depth mismatch", a failure of the tool.
config="$(pwd)/scripts/schemathesis.toml"
(cd "$work" && exec timeout 300 "$venv/bin/schemathesis" --no-color --config-file "$config" run "$base/api/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $token" \
    --exclude-operation-id logout --exclude-operation-id logout_all \
    --exclude-operation-id change_password --exclude-operation-id delete_me \
    --exclude-operation-id websocket \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --generation-database none \
    --request-timeout 15 \
    --workers 1) \
    || status=$?
if [ "$status" != 0 ]; then
    echo "--- server log (last 40 lines)" >&2
    tail -40 "$work/server.log" >&2
    echo "FAIL: schemathesis found mismatches between the server and /api/openapi.json" >&2
    exit "$status"
fi
echo "ok: the server and /api/openapi.json agree (schemathesis --checks all)"
