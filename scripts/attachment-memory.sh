#!/usr/bin/env bash
# How much memory a large attachment upload and download cost the server: starts the given server
# binary (default: target/release/kisse-backend) on a temporary SQLite database, uploads SIZE_MIB
# (default 100) of random bytes with one tus PATCH, downloads them again, and prints the server's
# resident memory before, its peak (VmHWM) during, and whether the bytes came back unchanged.
# With --s3, the attachment goes to an S3 bucket of moto's server (tests/attachments/moto_s3.py,
# from the venv the S3 attachment tests install: `cargo test --test api attachments_s3` once).
#
#   cargo build --release && scripts/attachment-memory.sh [--s3] [BINARY] [SIZE_MIB]
#
# Loopback only; stops the server (and moto) on exit. A measurement, not a test: it asserts
# nothing but the round trip.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
s3=""
if [ "${1:-}" = "--s3" ]; then
    s3="yes"
    shift
fi
binary="${1:-$root/target/release/kisse-backend}"
size_mib="${2:-100}"
[ -x "$binary" ] || { echo "no server binary at $binary (cargo build --release)" >&2; exit 1; }
binary="$(realpath "$binary")"
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }

work="$(mktemp -d)"
server_pid=""
moto_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

storage=(ATTACHMENT_DIR="$work/attachments")
if [ -n "$s3" ]; then
    python="$root/target/attachments-s3-venv/bin/python"
    [ -x "$python" ] || { echo "no moto at $python: run cargo test --test api attachments_s3 once" >&2; exit 1; }
    # moto serves until its standard input closes: a pipe this script holds open.
    mkfifo "$work/moto-in" "$work/moto-out"
    "$python" "$root/tests/attachments/moto_s3.py" kisse-memory <"$work/moto-in" >"$work/moto-out" &
    moto_pid=$!
    exec {moto_in}>"$work/moto-in"
    read -r endpoint <"$work/moto-out"
    storage=(ATTACHMENT_S3_BUCKET=kisse-memory ATTACHMENT_S3_ENDPOINT="$endpoint"
        ATTACHMENT_S3_ALLOW_HTTP=true ATTACHMENT_S3_ACCESS_KEY_ID=testing
        ATTACHMENT_S3_SECRET_ACCESS_KEY=testing)
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
(cd "$work" && exec env -i PATH="$PATH" SERVER_ADDRESS="127.0.0.1:$port" \
    JWT_SECRET="$(head -c 48 /dev/urandom | base64 -w0)" \
    DATABASE_URL="sqlite://$work/kisse.db" ATTACHMENT_MAX_BYTES=$((size_mib * 1048576 + 1)) \
    ATTACHMENT_QUOTA_BYTES=$((size_mib * 2097152)) "${storage[@]}" RUST_LOG=warn "$binary" serve) &
server_pid=$!
for _ in $(seq 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done
curl -sf "$base/health" >/dev/null || { echo "the server did not start" >&2; exit 1; }

# VmHWM is the peak since the process started: an upper bound for the upload's own peak.
kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$server_pid/status"; }
token="$(curl -sf -H 'Content-Type: application/json' \
    -d '{"email":"mem@example.com","username":"mem_user","password":"password-mem"}' \
    "$base/api/auth/register" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"

head -c "$((size_mib * 1048576))" /dev/urandom > "$work/upload.bin"
before_rss="$(kib VmRSS)"
location="$(curl -sf -D - -o /dev/null -X POST -H "Authorization: Bearer $token" \
    -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $((size_mib * 1048576))" \
    "$base/api/attachments" | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')"
[ -n "$location" ] || { echo "the upload was not created" >&2; exit 1; }
started="$(date +%s.%N)"
curl -sf -X PATCH -H "Authorization: Bearer $token" -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' \
    --data-binary "@$work/upload.bin" "$base$location" -o /dev/null
uploaded="$(date +%s.%N)"
curl -sf -H "Authorization: Bearer $token" "$base$location" -o "$work/download.bin"
downloaded="$(date +%s.%N)"
peak="$(kib VmHWM)"
after_rss="$(kib VmRSS)"

same="no"
cmp -s "$work/upload.bin" "$work/download.bin" && same="yes"
echo "upload of ${size_mib} MiB${s3:+ to S3}: $(python3 -c "print(f'{$uploaded - $started:.2f}')") s; download: $(python3 -c "print(f'{$downloaded - $uploaded:.2f}')") s; bytes back unchanged: $same"
echo "server RSS before: $((before_rss / 1024)) MiB; peak during: $((peak / 1024)) MiB (+$(((peak - before_rss) / 1024)) MiB); after: $((after_rss / 1024)) MiB"
[ "$same" = "yes" ]
