"""Settings read from the environment, in one place.

Every process of the mesh (CLI, each Ray Serve replica, jobs) reads its settings
here, so a variable means the same thing everywhere. Secrets (the Stripe key and
webhook secrets) come only from the environment and are never logged: their
fields are ``SecretStr``.

Defaults are the embedded ones: no server needs installing by hand. State lives
under ``FRAUDMESH_STATE_DIR`` (``.fraudmesh`` in the working directory).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ActuationMode(StrEnum):
    LIVE = "live"
    DRY_RUN = "dry-run"
    SHADOW = "shadow"


class OnlineStoreKind(StrEnum):
    SQLITE = "sqlite"
    REDIS = "redis"


class Settings(BaseSettings):
    """Process settings. Field docs name the environment variable."""

    model_config = SettingsConfigDict(env_prefix="FRAUDMESH_", extra="ignore")

    state_dir: Path = Field(
        default=Path(".fraudmesh"),
        description="FRAUDMESH_STATE_DIR: registry, online store, models, reports.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "FRAUDMESH_REDIS_URL"),
        description="REDIS_URL: behaviour history, idempotency, queues. "
        "Unset: an embedded Valkey server is started by `fraudmesh serve`.",
    )
    online_store: OnlineStoreKind = Field(
        default=OnlineStoreKind.SQLITE,
        description="FRAUDMESH_ONLINE_STORE: Feast online store, sqlite or redis.",
    )
    feast_registry: str | None = Field(
        default=None,
        description="FRAUDMESH_FEAST_REGISTRY: a file path (default under the state "
        "dir) or a postgresql:// URL for Feast's SQL registry.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="FRAUDMESH_MODEL_DIR: model artefacts; default <state_dir>/models.",
    )

    stripe_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_API_KEY")
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com",
        validation_alias=AliasChoices("STRIPE_API_BASE"),
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET"),
        description="Several secrets separated by commas during a rotation.",
    )
    actuation_mode: ActuationMode | None = Field(
        default=None,
        description="FRAUDMESH_ACTUATION_MODE: live, dry-run or shadow; "
        "dry-run when no Stripe API key is set.",
    )

    @field_validator("state_dir", "model_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        # Absolute from the start: Feast resolves paths against its repository
        # directory, so a relative state dir would be taken twice.
        return None if value is None else value.expanduser().resolve()

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.state_dir / "models"

    @property
    def effective_actuation_mode(self) -> ActuationMode:
        if self.actuation_mode is not None:
            return self.actuation_mode
        return ActuationMode.LIVE if self.stripe_api_key else ActuationMode.DRY_RUN

    @property
    def webhook_secrets(self) -> list[str]:
        if self.stripe_webhook_secret is None:
            return []
        raw = self.stripe_webhook_secret.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
