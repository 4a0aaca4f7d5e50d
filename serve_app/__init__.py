"""What runs inside Ray Serve: the config, the engine and router deployments, and the app builder."""

from serve_app.config import ClusterConfig, ConfigError, load_config, parse_config

__all__ = ["ClusterConfig", "ConfigError", "build_app", "load_config", "parse_config"]


def build_app(args: dict):  # noqa: ANN201 - re-exported lazily so `import serve_app` stays light
    from serve_app.builder import build_app as _build_app

    return _build_app(args)
