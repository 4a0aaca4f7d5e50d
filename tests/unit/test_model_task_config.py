"""A model's `task` and `frontend` settings: checked at load with errors that name the field, carried to the engine,
and named as the installed vLLM names them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from serve_app.config import ConfigError, parse_config
from serve_app.llm_server import engine_spec
from serve_app.openai_settings import (FRONTEND_ARGS_FILE, TOOL_PARSERS_FILE, vllm_frontend_arg_names,
                                       vllm_tool_parser_names)
from serve_app.vllm_adapter import engine_kwargs


def model(**fields: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "source": "/models/m", **fields}]}


def refusal(**fields: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(model(**fields))
    return str(caught.value)


def test_the_task_defaults_to_generate_and_embed_is_accepted() -> None:
    assert parse_config(model()).models[0].task == "generate"
    assert parse_config(model(task="embed", engine={"convert": "embed"})).models[0].task == "embed"


def test_an_unknown_task_names_the_field_and_the_tasks() -> None:
    message = refusal(task="classify")
    assert "models.0.task" in message and "'generate'" in message and "'embed'" in message


@pytest.mark.parametrize(("fields", "expected"), [
    ({"engine": {"runner": "pooling"}}, "engine.runner is set by the model's `task`"),
    ({"engine": {"convert": "embed"}}, "engine.convert configures vLLM's pooling runner: it needs task: embed"),
    ({"engine": {"pooler_config": {"seq_pooling_type": "MEAN"}}}, "engine.pooler_config configures"),
    ({"task": "embed", "engine": {"convert": "classify"}}, "engine.convert 'classify' does not make an embedding"),
])
def test_engine_arguments_that_conflict_with_the_task_are_refused(fields: dict[str, Any], expected: str) -> None:
    assert expected in refusal(**fields)


@pytest.mark.parametrize(("frontend", "expected"), [
    ({"tool_call_parsr": "hermes"}, "frontend.tool_call_parsr is not a vLLM 0.32.0 OpenAI-layer setting"),
    ({"port": 9000}, "frontend.port is not"),  # a server setting: the router owns the port
    ({"tool_call_parser": "hermez"}, "did you mean hermes?"),
    ({"enable_auto_tool_choice": True}, "frontend.enable_auto_tool_choice needs frontend.tool_call_parser"),
])
def test_bad_frontend_settings_name_the_field_and_the_fix(frontend: dict[str, Any], expected: str) -> None:
    assert expected in refusal(frontend=frontend)


def test_generation_settings_on_an_embed_model_are_refused() -> None:
    message = refusal(task="embed", frontend={"tool_call_parser": "hermes"})
    assert "frontend.tool_call_parser shapes generated answers: it needs task: generate, not embed" in message


def test_an_embed_model_may_set_its_chat_template() -> None:
    assert parse_config(model(task="embed", frontend={"chat_template": "{{ messages }}"})).models[0].frontend


def test_task_and_frontend_reach_the_engine_spec_and_vllms_arguments() -> None:
    embed = parse_config(model(task="embed")).models[0]
    spec = engine_spec(embed, "/models/m")
    assert (spec.task, engine_kwargs(spec)["runner"]) == ("embed", "pooling")
    tools = parse_config(model(frontend={"enable_auto_tool_choice": True, "tool_call_parser": "hermes"})).models[0]
    spec = engine_spec(tools, "/models/m")
    assert spec.frontend_args == {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    assert "runner" not in engine_kwargs(spec)


def test_the_frontend_settings_are_fields_of_the_installed_vllms_frontend_args() -> None:
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    installed = {f.name for f in dataclasses.fields(FrontendArgs)}
    assert vllm_frontend_arg_names() <= installed, (
        f"{FRONTEND_ARGS_FILE.name} names settings vLLM no longer has: {sorted(vllm_frontend_arg_names() - installed)}")


def test_the_tool_parser_list_is_the_installed_vllms() -> None:
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    installed = frozenset(ToolParserManager.list_registered())
    assert vllm_tool_parser_names() == installed, (
        f"{TOOL_PARSERS_FILE.name} differs from vLLM's tool parsers: gone: "
        f"{sorted(vllm_tool_parser_names() - installed)}; new: {sorted(installed - vllm_tool_parser_names())}")
