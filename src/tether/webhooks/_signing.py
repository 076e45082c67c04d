"""Secrets and signatures.

Two signatures go with every request, over the exact bytes of the body:

- ``X-Cmdop-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body, keyed with the secret
  string as given (its UTF-8 bytes, ``whsec_`` prefix included), for receivers written
  against CMDOP's documentation;
- Standard Webhooks: ``webhook-id`` (the event id, the same on every retry so receivers can
  de-duplicate), ``webhook-timestamp`` (Unix seconds of the attempt) and
  ``webhook-signature: v1,<base64>``: HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` keyed with
  the secret's base64-decoded bytes, as the spec and its ``standardwebhooks`` libraries expect.

Secrets follow the Standard Webhooks form: ``whsec_`` + base64 of 24 to 64 random bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from tether.engine import InvalidParameter

SECRET_PREFIX = "whsec_"
_MIN_KEY, _MAX_KEY = 24, 64


def generate_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; :class:`InvalidParameter` if malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise InvalidParameter("secret", f"must start with '{SECRET_PREFIX}'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("secret", "must be 'whsec_' followed by base64") from None
    if not _MIN_KEY <= len(key) <= _MAX_KEY:
        raise InvalidParameter("secret", f"must encode {_MIN_KEY} to {_MAX_KEY} bytes")
    return key


def signature_headers(
    secret: str, key: bytes, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The signature headers of one request (see the module docstring)."""
    cmdop = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    signed = b"%s.%d.%s" % (message_id.encode("utf-8"), timestamp, body)
    standard = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
    return {
        "X-Cmdop-Signature": "sha256=" + cmdop,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + standard,
    }
