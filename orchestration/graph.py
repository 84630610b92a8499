"""Build the fraudmesh application from orchestration/serve_config.yaml.

The chain, each hop holding a handle to the next, all async:

    Ingress -> Ingest -> Features.lookup (+ Features.record)
                      -> Model -> Policy -> Actuation
    Ingress -> Webhooks (Stripe events) -> Ingest / Features / Policy / Actuation

``serve_config.yaml`` is the one place for every deployment's autoscaling,
resources and user config. ``serve deploy`` / KubeRay apply it to ``app`` (the
import path in the file); local runs call :func:`build_app`, which applies the
same options here.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from fraudmesh.config import get_settings
from fraudmesh.errors import ConfigError

SERVE_CONFIG_PATH = Path(__file__).with_name("serve_config.yaml")
APP_NAME = "fraudmesh"
DEPLOYMENTS = (
    "Ingress",
    "Ingest",
    "Features",
    "Model",
    "Policy",
    "Actuation",
    "Webhooks",
)
_OPTION_KEYS = {
    "num_replicas",
    "max_ongoing_requests",
    "max_queued_requests",
    "autoscaling_config",
    "ray_actor_options",
    "user_config",
    "graceful_shutdown_timeout_s",
    "health_check_period_s",
    "health_check_timeout_s",
    "logging_config",
}


@lru_cache(maxsize=4)
def load_serve_config(path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the serve config ({exc})") from exc
    return config


def app_config(path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    for app in load_serve_config(path).get("applications", []):
        if app.get("name") == APP_NAME:
            return app
    raise ConfigError(str(path), f"no application named {APP_NAME!r}")


def deployment_options(name: str, path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    """The ``.options(...)`` of deployment ``name`` from the serve config.

    The application's ``logging_config`` applies to every deployment that does
    not set its own.
    """
    app = app_config(path)
    for entry in app.get("deployments", []):
        if entry.get("name") == name:
            options = {k: v for k, v in entry.items() if k in _OPTION_KEYS}
            if "logging_config" in app:
                options.setdefault("logging_config", app["logging_config"])
            return options
    raise ConfigError(str(path), f"deployment {name!r} is not configured")


def build_app(
    *,
    redis_url: str | None = None,
    models_dir: str | Path | None = None,
    config_path: Path = SERVE_CONFIG_PATH,
) -> Application:
    """The mesh as a Serve application; settings default to the environment."""
    from services.actuation import Actuation
    from services.features import Features
    from services.ingest import Ingest
    from services.ingress import Ingress
    from services.model import Model
    from services.policy import Policy
    from services.webhooks import Webhooks

    settings = get_settings()
    redis_url = redis_url or settings.redis_url or os.environ.get("REDIS_URL")
    if not redis_url:
        raise ConfigError(
            "REDIS_URL", "not set; `fraudmesh serve` starts an embedded Valkey"
        )
    models_dir = str(models_dir or settings.models_path)

    def opts(deployment, name):
        return deployment.options(**deployment_options(name, config_path))

    actuation = opts(Actuation, "Actuation").bind()
    policy = opts(Policy, "Policy").bind(actuation)
    model = opts(Model, "Model").bind(policy, models_dir)
    features = opts(Features, "Features").bind(redis_url)
    ingest = opts(Ingest, "Ingest").bind(features, model, redis_url)
    # Stripe's events: scored through Ingest, labels and account changes into
    # Features, Radar re-decisions through Policy, label follow-ups to Actuation.
    webhooks = opts(Webhooks, "Webhooks").bind(
        ingest, features, policy, actuation, redis_url
    )
    return opts(Ingress, "Ingress").bind(ingest, webhooks)


def __getattr__(name: str) -> Any:
    # `app` for serve deploy's import_path, built on first access so that
    # importing this module needs no settings.
    if name == "app":
        return build_app()
    raise AttributeError(name)
