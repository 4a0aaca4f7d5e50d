"""A model's task and the settings of vLLM's OpenAI layer for it, checked by name against the pinned vLLM."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

# The OpenAI-layer settings (vLLM FrontendArgs names) a model may set, and vLLM's tool-call parser names. Kept as
# text beside this module, as vllm_engine_args.txt is: a config is checked without importing vLLM, and a test
# compares both lists with the installed vLLM.
FRONTEND_ARGS_FILE = Path(__file__).with_name("vllm_frontend_args.txt")
TOOL_PARSERS_FILE = Path(__file__).with_name("vllm_tool_parsers.txt")
# Settings that only shape generated answers (tool calls, roles, token output): meaningless for an embed model.
_GENERATE_ONLY = frozenset({"enable_auto_tool_choice", "exclude_tools_when_tool_choice_none", "response_role",
                            "return_tokens_as_token_ids", "tool_call_parser", "tool_strict_level"})
# Engine arguments of vLLM's pooling runner: with task generate they would be ignored or turn the model into
# something the router does not route to.
_EMBED_ONLY_ENGINE_ARGS = ("convert", "pooler_config")
# vLLM's `convert` values that make an embedding model (auto picks embed for a text generation architecture).
_EMBED_CONVERTS = ("auto", "embed", "none")


@cache
def vllm_frontend_arg_names() -> frozenset[str]:
    return frozenset(FRONTEND_ARGS_FILE.read_text().split())


@cache
def vllm_tool_parser_names() -> frozenset[str]:
    return frozenset(TOOL_PARSERS_FILE.read_text().split())


def task_engine_problem(engine: dict[str, Any], task: str) -> str | None:
    """Why `engine` (a model's vLLM engine arguments) conflicts with its `task`, if it does."""
    if task == "generate":
        wrong = [name for name in _EMBED_ONLY_ENGINE_ARGS if name in engine]
        if wrong:
            return f"engine.{wrong[0]} configures vLLM's pooling runner: it needs task: embed"
    elif engine.get("convert", "auto") not in _EMBED_CONVERTS:
        return (f"engine.convert {engine['convert']!r} does not make an embedding model; with task: embed use one "
                f"of {', '.join(_EMBED_CONVERTS)}")
    return None


def frontend_problem(frontend: dict[str, Any], task: str, vllm_version: str) -> str | None:
    """Why `frontend` (a model's OpenAI-layer settings) is wrong for a model of `task`, if it is."""
    known = vllm_frontend_arg_names()
    for key in frontend:
        if key not in known:
            return (f"frontend.{key} is not a vLLM {vllm_version} OpenAI-layer setting llmcluster passes on"
                    f"{_hint(key, known)}; allowed: {', '.join(sorted(known))}")
        if task != "generate" and key in _GENERATE_ONLY:
            return f"frontend.{key} shapes generated answers: it needs task: generate, not {task}"
    parser = frontend.get("tool_call_parser")
    parsers = vllm_tool_parser_names()
    if parser is not None and parser not in parsers:
        return (f"frontend.tool_call_parser {parser!r} is not a vLLM {vllm_version} tool-call parser"
                f"{_hint(str(parser), parsers)}; allowed: {', '.join(sorted(parsers))}")
    if frontend.get("enable_auto_tool_choice") and parser is None:
        return ("frontend.enable_auto_tool_choice needs frontend.tool_call_parser: the parser that reads the "
                "model's tool calls (hermes, llama3_json, mistral, ...)")
    return None


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""
