#!/usr/bin/env python3
"""Verifies a Herald feedback webhook the Standard Webhooks way (standard library only).

    verify-webhook.py SECRET WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE < body.json

Exits 0 and prints the event when the signature holds, 1 otherwise. In a receiver, call
`verify` with the raw request body (before any JSON parsing) and the three headers.
"""
import base64
import hashlib
import hmac
import sys
import time

TOLERANCE_SECONDS = 5 * 60


def verify(secret: str, webhook_id: str, timestamp: str, signatures: str, body: bytes) -> bool:
    # The key is the base64 part of the secret, after `whsec_`.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    # Refuse old or future timestamps: a captured request cannot be replayed later.
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may carry several signatures (`v1,<sig> v1,<sig>`), e.g. during a secret rotation.
    for signature in signatures.split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


if __name__ == "__main__":
    secret, webhook_id, timestamp, signatures = sys.argv[1:5]
    body = sys.stdin.buffer.read()
    if not verify(secret, webhook_id, timestamp, signatures, body):
        print("signature does not verify", file=sys.stderr)
        sys.exit(1)
    print(body.decode())
