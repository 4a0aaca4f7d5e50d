"""What runs inside Ray Serve: the config, the engine and router deployments, and the app builder."""

from __future__ import annotations

from typing import Any

__all__ = ["ClusterConfig", "ConfigError", "build_app", "load_config", "parse_config"]

# Imported on first use: `import serve_app.<module>` must not load the config models (pydantic, ~0.2 s), which
# `llmcluster status` and other light commands never need.
_CONFIG_NAMES = frozenset({"ClusterConfig", "ConfigError", "load_config", "parse_config"})


def __getattr__(name: str) -> Any:
    if name in _CONFIG_NAMES:
        from serve_app import config

        return getattr(config, name)
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")


def build_app(args: dict):  # noqa: ANN201 - re-exported lazily so `import serve_app` stays light
    from serve_app.builder import build_app as _build_app

    return _build_app(args)
