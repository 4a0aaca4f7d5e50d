"""Config validation: every example loads, and each kind of mistake names its field and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from serve_app.config import ConfigError, load_config, parse_config
from tests.conftest import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def minimal(**model: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "source": "org/model", **model}]}


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.models


def test_local_config_is_the_demo_model_on_cpu() -> None:
    config = load_config(REPO_ROOT / "configs" / "local.yaml")
    (model,) = config.models
    assert model.source == "builtin:smollm2-135m-instruct"
    assert model.resources.device == "cpu"
    assert (model.autoscaling.min_replicas, model.autoscaling.max_replicas) == (1, 1)
    assert config.router.port == 8000


def test_defaults_fill_a_minimal_config() -> None:
    config = parse_config(minimal())
    model = config.models[0]
    assert model.parallelism.world_size == 1 and model.resources.device == "cpu"
    assert config.model("m") is model


def test_unknown_field_names_it_and_lists_allowed() -> None:
    message = error_of(minimal(parallelism={"tensor": 2, "pipline": 2}))
    assert "models.0.parallelism.pipline" in message
    assert "tensor" in message and "pipeline" in message


def test_unknown_top_level_section() -> None:
    assert "routr" in error_of({**minimal(), "routr": {}})


def test_misspelt_engine_argument_suggests_the_right_one() -> None:
    message = error_of(minimal(engine={"max_model_length": 4096}))
    assert "models.0.engine" in message and "max_model_len" in message


def test_engine_argument_owned_by_another_field_is_refused() -> None:
    message = error_of(minimal(engine={"tensor_parallel_size": 2}))
    assert "parallelism.tensor" in message


@pytest.mark.parametrize("section, values, fragment", [
    ("autoscaling", {"min_replicas": 3, "max_replicas": 2}, "min_replicas must be <= max_replicas"),
    ("autoscaling", {"min_replicas": -1}, "min_replicas"),
    ("parallelism", {"tensor": 0}, "parallelism.tensor"),
    ("resources", {"device": "tpu"}, "'cpu' or 'gpu'"),
    ("resources", {"accelerator": "H100"}, "only allowed with device: gpu"),
])
def test_out_of_range_values_name_the_field(section: str, values: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(minimal(**{section: values}))


def test_names_and_aliases_must_be_unique() -> None:
    data = {"models": [{"name": "a", "source": "x/a", "aliases": ["shared"]},
                       {"name": "b", "source": "x/b", "aliases": ["shared"]}]}
    assert "'shared'" in error_of(data)


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(Exception):
        config.router.port = 1  # type: ignore[misc]


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_cli_rejects_a_bad_config_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(autoscaling={"max_replicas": 0})))
    for command in (["validate", str(bad)], ["serve", str(bad)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "models.0.autoscaling.max_replicas" in result.output


def test_cli_validates_a_good_config() -> None:
    result = CliRunner().invoke(app, ["validate", str(REPO_ROOT / "configs" / "local.yaml")])
    assert result.exit_code == 0 and "smollm2" in result.output
