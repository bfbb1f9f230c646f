#!/usr/bin/env python3
"""A Web Push receiver (a push service and the browser behind it, in one) for the integration
tests of tests/api/push.rs, driven by tests/api/push_receiver.rs.

It decrypts what it receives with http_ece, an implementation of RFC 8188/8291 that is not the
server's, and checks the VAPID token (RFC 8292) with `cryptography`, so a bug shared by the
server's encoder and a decoder of ours cannot pass unseen.

    receiver.py              serves on 127.0.0.1, an ephemeral port; prints {"port": N} and
                             serves until standard input closes (or it is killed)
    receiver.py --selftest   decrypts RFC 8291's Appendix A message with the receiver's own
                             decoding path; exits 0 when the published plaintext comes out
    receiver.py --send ENDPOINT P256DH AUTH [--bad-signature]
                             an application server that is not ours: encrypts a message for
                             the subscription with http_ece, signs a VAPID token, POSTs it and
                             prints {"status": N}

Control API (JSON), beside the push endpoints POST /push/<id>:
    POST /_subscriptions                 -> {"id","endpoint","keys":{"p256dh","auth"}}
    POST /_subscriptions/<id>/mode       {"status":201|410|429|500|307,"retry_after"?,
                                          "location"?} or {"hang":true}
    GET  /_subscriptions/<id>/received   -> every push received for it, in order
    GET  /_requests                      -> every request to a path outside /_ (any method)
"""

import base64
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

# RFC 8292 §2: a token must not be valid for more than 24 hours. One second of slack for a
# sender that rounds `now` up.
MAX_TOKEN_LIFETIME = 24 * 3600 + 1


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def decrypt_push(body: bytes, private_key, auth: bytes) -> bytes:
    """RFC 8291: the aes128gcm body, its header carrying the sender's ephemeral key."""
    return http_ece.decrypt(
        body, private_key=private_key, auth_secret=auth, version="aes128gcm"
    )


def check_vapid(authorization, origin: str) -> dict:
    """Parses `vapid t=<jwt>, k=<key>` and checks the ES256 signature against `k`, then the
    claims: `aud` the endpoint's origin, `exp` ahead but at most 24 h, `sub` present."""
    result = {"valid": False, "k": None, "claims": None, "error": None}
    try:
        scheme, _, params = authorization.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"scheme {scheme!r}, not vapid")
        fields = {}
        for part in params.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep:
                raise ValueError(f"malformed parameter {part.strip()!r}")
            fields[name.strip()] = value.strip()
        token, key = fields.get("t"), fields.get("k")
        if not token or not key:
            raise ValueError("t= or k= missing")
        result["k"] = key
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(unb64url(header_b64))
        result["claims"] = claims = json.loads(unb64url(claims_b64))
        if header.get("alg") != "ES256":
            raise ValueError(f"alg {header.get('alg')!r}, not ES256")
        signature = unb64url(signature_b64)
        if len(signature) != 64:
            raise ValueError(f"signature of {len(signature)} bytes, not r||s (64)")
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), unb64url(key)
        )
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public_key.verify(
                der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise ValueError("bad signature") from None
        if claims.get("aud") != origin:
            raise ValueError(f"aud {claims.get('aud')!r}, not {origin!r}")
        exp, now = claims.get("exp"), time.time()
        if not isinstance(exp, int) or not (now < exp <= now + MAX_TOKEN_LIFETIME):
            raise ValueError(f"exp {exp!r} not within the next 24 h (now {int(now)})")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise ValueError("sub missing")
        result["valid"] = True
    except Exception as e:  # any malformation is the finding, recorded for the test
        result["error"] = f"{type(e).__name__}: {e}"
    return result


class Subscription:
    def __init__(self, sub_id: str):
        self.id = sub_id
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.mode = {"status": 201}
        self.received = []


class State:
    def __init__(self):
        # One lock for everything; `changed` wakes the hanging handlers when a mode changes.
        self.changed = threading.Condition()
        self.subscriptions = {}
        self.requests = []
        self.origin = None


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet: the tests read the records
        pass

    # --- plumbing ---------------------------------------------------------------------------
    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, body=None, headers=()):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def lower_headers(self) -> dict:
        return {name.lower(): value for name, value in self.headers.items()}

    def handle_any(self):
        body = self.read_body()
        path = self.path.split("?")[0]
        if not path.startswith("/_"):
            with STATE.changed:
                STATE.requests.append(
                    {"method": self.command, "path": self.path, "headers": self.lower_headers()}
                )
        parts = [p for p in path.split("/") if p]
        try:
            if self.command == "POST" and parts == ["_subscriptions"]:
                return self.create_subscription()
            if self.command == "POST" and len(parts) == 3 and parts[0] == "_subscriptions" and parts[2] == "mode":
                return self.set_mode(parts[1], json.loads(body or b"{}"))
            if self.command == "GET" and len(parts) == 3 and parts[0] == "_subscriptions" and parts[2] == "received":
                return self.list_received(parts[1])
            if self.command == "GET" and parts == ["_requests"]:
                with STATE.changed:
                    return self.answer(200, list(STATE.requests))
            if self.command == "POST" and len(parts) == 2 and parts[0] == "push":
                return self.push(parts[1], body)
            self.answer(404, {"error": "no such path"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout cutting a hanging answer): nothing to answer

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

    # --- control API ------------------------------------------------------------------------
    def create_subscription(self):
        with STATE.changed:
            sub = Subscription(f"s{len(STATE.subscriptions) + 1}")
            STATE.subscriptions[sub.id] = sub
        self.answer(
            201,
            {
                "id": sub.id,
                "endpoint": f"{STATE.origin}/push/{sub.id}",
                "keys": {"p256dh": b64url(public_point(sub.private_key)), "auth": b64url(sub.auth)},
            },
        )

    def set_mode(self, sub_id: str, mode: dict):
        with STATE.changed:
            sub = STATE.subscriptions.get(sub_id)
            if sub is None:
                return self.answer(404, {"error": "no such subscription"})
            sub.mode = {"status": 201, **mode}
            STATE.changed.notify_all()
        self.answer(200, sub.mode)

    def list_received(self, sub_id: str):
        with STATE.changed:
            sub = STATE.subscriptions.get(sub_id)
            if sub is None:
                return self.answer(404, {"error": "no such subscription"})
            self.answer(200, list(sub.received))

    # --- the push endpoint ------------------------------------------------------------------
    def push(self, sub_id: str, body: bytes):
        with STATE.changed:
            sub = STATE.subscriptions.get(sub_id)
        if sub is None:
            return self.answer(404, {"error": "no such subscription"})
        headers = self.lower_headers()
        encoding = headers.get("content-encoding")
        record = {
            "path": self.path,
            "headers": headers,
            "encoding": encoding,
            "plaintext": None,
            "error": None,
            "vapid": None,
            "answered": None,
        }
        try:
            raw = decrypt_push(body, sub.private_key, sub.auth) if encoding == "aes128gcm" else body
            record["plaintext"] = raw.decode("utf-8")
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
        if "authorization" in headers:
            record["vapid"] = check_vapid(headers["authorization"], STATE.origin)
        with STATE.changed:
            sub.received.append(record)
            # A hanging endpoint takes the request and says nothing until its mode changes.
            STATE.changed.wait_for(lambda: not sub.mode.get("hang"))
            mode = dict(sub.mode)
            status = int(mode.get("status", 201))
            # Recorded before the answer goes out: whoever has the answer finds it recorded.
            record["answered"] = status
        extra = []
        if "retry_after" in mode:
            extra.append(("Retry-After", str(mode["retry_after"])))
        if "location" in mode:
            extra.append(("Location", mode["location"]))
        self.answer(status, None, extra)


def serve():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    STATE.origin = f"http://127.0.0.1:{port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": port}), flush=True)
    # Until the test's end closes our standard input (or kills us); hanging handlers are
    # daemon threads and die with the process.
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


# --- the independent sender and the self-test ------------------------------------------------
def send(endpoint: str, p256dh: str, auth: str, bad_signature: bool) -> int:
    """What an application server does (RFC 8291 + RFC 8292), with code that is not ours."""
    message = json.dumps({"type": "selftest", "via": "http_ece"}).encode()
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    body = http_ece.encrypt(
        message,
        private_key=ephemeral,
        dh=unb64url(p256dh),
        auth_secret=unb64url(auth),
        version="aes128gcm",
    )
    vapid = ec.generate_private_key(ec.SECP256R1())
    scheme, _, rest = endpoint.partition("://")
    origin = f"{scheme}://{rest.split('/')[0]}"
    header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    claims = b64url(
        json.dumps({"aud": origin, "exp": int(time.time()) + 3600, "sub": "mailto:selftest@localhost"}).encode()
    )
    r, s = decode_dss_signature(vapid.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256())))
    signature = bytearray(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    if bad_signature:
        signature[10] ^= 0x01
    request = urllib.request.Request(
        endpoint,
        data=body,
        method="POST",
        headers={
            "Content-Encoding": "aes128gcm",
            "TTL": "60",
            "Urgency": "normal",
            "Authorization": f"vapid t={header}.{claims}.{b64url(bytes(signature))}, k={b64url(public_point(vapid))}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def selftest() -> None:
    """RFC 8291 Appendix A: the published message must decrypt, on the receiver's own path."""
    ua_private = ec.derive_private_key(
        int.from_bytes(unb64url("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"), ec.SECP256R1()
    )
    assert b64url(public_point(ua_private)) == (
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    )
    body = unb64url(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6Tlz"
        "AC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    )
    plaintext = decrypt_push(body, ua_private, unb64url("BTBZMqHH6r4Tts7J_aSIgg"))
    assert plaintext == b"When I grow up, I want to be a watermelon", plaintext
    tampered = bytearray(body)
    tampered[-1] ^= 0x40
    try:
        decrypt_push(bytes(tampered), ua_private, unb64url("BTBZMqHH6r4Tts7J_aSIgg"))
    except http_ece.ECEException:
        pass
    else:
        raise AssertionError("a tampered body decrypted")
    print(json.dumps({"selftest": "ok"}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--selftest"]:
        selftest()
    elif args[:1] == ["--send"] and len(args) >= 4:
        status = send(args[1], args[2], args[3], bad_signature="--bad-signature" in args[4:])
        print(json.dumps({"status": status}), flush=True)
    elif not args:
        serve()
    else:
        sys.exit(__doc__)
