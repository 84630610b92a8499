"""Stripe's webhook signature scheme, computed here as Stripe does (for tests).

``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
HMAC-SHA256, keyed by the endpoint secret, of ``"<t>." + raw body``. Written out
rather than taken from the SDK, so the SDK's verification is checked against an
independent signer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SECRET = "whsec_test_fraudmesh_current"
OLD_SECRET = "whsec_test_fraudmesh_previous"


def v1(body: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(
    body: bytes, *secrets: str, timestamp: int | None = None, extra: str = ""
) -> str:
    """A header with one v1 signature per secret (several during a rotation)."""
    t = int(time.time()) if timestamp is None else timestamp
    parts = [f"t={t}"] + [f"v1={v1(body, s, t)}" for s in (secrets or (SECRET,))]
    if extra:
        parts.append(extra)
    return ",".join(parts)


def event_body(
    etype: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    api_version: str = "2026-10-28.endive",
    previous_attributes: dict[str, Any] | None = None,
) -> bytes:
    created = int(time.time()) if created is None else created
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    event = {
        "id": event_id or f"evt_{etype.replace('.', '_')}_{created}_{obj.get('id')}",
        "object": "event",
        "api_version": api_version,
        "created": created,
        "livemode": False,
        "type": etype,
        "data": data,
    }
    # Stripe's bodies are pretty-printed; any bytes work as long as they are
    # verified as received.
    return json.dumps(event, indent=2).encode()
