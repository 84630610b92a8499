"""Replay real payments, in time order, against a running mesh (placeholder)."""

from __future__ import annotations

from typing import Any

from fraudmesh.currency import to_minor

CURRENCY = "eur"


def payment_body(row: dict[str, Any]) -> dict[str, Any]:
    """A data-set row as the ``POST /v1/score`` body (amount in minor units)."""
    return {
        "id": row["payment_key"],
        "amount": to_minor(float(row["tx_amount"]), CURRENCY),
        "currency": CURRENCY,
        "customer": row["customer_key"],
        "created": int(row["tx_datetime"].timestamp()),
        "metadata": {"terminal_id": row["terminal_key"]},
    }
