"""vLLM's own OpenAPI schema for the chat and completion endpoints, built from the installed vLLM without an engine."""

from __future__ import annotations

import argparse
import copy
from functools import cache
from typing import Any

FUZZED_PATHS = ("/v1/chat/completions", "/v1/completions")


@cache
def vllm_openapi_schema() -> dict[str, Any]:
    """`app.openapi()` of the app `vllm serve` builds, cut down to POST on FUZZED_PATHS.

    build_app only registers routers; the engine comes later (init_app_state), so default front-end
    arguments and the "generate" task are enough to get the very request models vLLM validates against."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    app = build_app(argparse.Namespace(**vars(FrontendArgs())), supported_tasks=("generate",))
    schema = copy.deepcopy(app.openapi())
    missing = [path for path in FUZZED_PATHS if "post" not in schema["paths"].get(path, {})]
    if missing:
        raise RuntimeError(f"vLLM's app has no POST {missing}: has vLLM moved its OpenAI routes?")
    schema["paths"] = {path: {"post": schema["paths"][path]["post"]} for path in FUZZED_PATHS}
    return schema
