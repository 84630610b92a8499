"""The exception tree of fraudmesh.

Every error the project raises on purpose derives from :class:`FraudmeshError`.
Third-party failures (Redis, Stripe, Ray, Feast, file I/O) are translated into one
of these at the boundary where they happen and chained with ``raise ... from``,
so callers catch one tree and still see the original cause.

    FraudmeshError
    ├── ConfigError            a setting is missing or invalid
    ├── DataError              an input file, column, row or date is unusable
    ├── ValidationError        a payment or event failed validation (HTTP 422)
    ├── ArtifactError          a model artefact is missing, corrupt or incompatible
    ├── FeatureStoreError      the online or offline feature store failed
    ├── HistoryStoreError      the behaviour history (Redis) failed
    ├── WebhookError           a webhook could not be verified or parsed (HTTP 400)
    └── ActuationError         a Stripe action failed after its retries
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FraudmeshError(Exception):
    """Base class of every error raised on purpose by fraudmesh."""


class ConfigError(FraudmeshError):
    """A setting is missing or has a value fraudmesh cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class DataError(FraudmeshError):
    """An input file is unusable: names the file and, where known, column/row/date."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = None if path is None else str(path)
        self.column = column
        self.row = row


class ValidationError(FraudmeshError):
    """A payment or event is invalid. ``errors`` lists ``{"field", "message"}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        fields = ", ".join(str(e.get("field")) for e in errors)
        super().__init__(f"invalid fields: {fields}")
        self.errors = errors


class ArtifactError(FraudmeshError):
    """A model artefact is missing, corrupt, or does not match the feature repo."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = None if path is None else str(path)


class FeatureStoreError(FraudmeshError):
    """The Feast online or offline store failed."""


class HistoryStoreError(FraudmeshError):
    """Reading or writing the behaviour history in Redis failed."""


class WebhookError(FraudmeshError):
    """A webhook could not be verified or parsed; answered with HTTP 400."""

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


class ActuationError(FraudmeshError):
    """A Stripe action failed after its retries.

    Carries the payment id, the action and Stripe's request id when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        payment_id: str,
        action: str,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            f"{action} for {payment_id} failed: {message}"
            + (f" (status {http_status})" if http_status is not None else "")
            + (f" (request {request_id})" if request_id else "")
        )
        self.payment_id = payment_id
        self.action = action
        self.http_status = http_status
        self.request_id = request_id
