"""The vLLM plugin that lets CPU pipeline stages run eagerly: a later stage gets its input buffer on first use."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app.vllm_adapter import buffer_cpu_pipeline_stages


@pytest.fixture
def runner_class(monkeypatch: pytest.MonkeyPatch) -> Any:
    """vLLM's CPU model runner, its method restored after the test whatever the plugin does to it."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    name = "sync_and_gather_intermediate_tensors"
    monkeypatch.setattr(CPUModelRunner, name, getattr(CPUModelRunner, name))
    return CPUModelRunner


def later_stage(runner_class: Any) -> Any:
    """A runner of pipeline stage 2 of 2 as vLLM leaves it after loading eagerly: no input buffer yet."""
    import torch
    from vllm.model_executor.models.utils import make_empty_intermediate_tensors_factory

    runner = object.__new__(runner_class)
    runner.intermediate_tensors, runner.max_num_tokens, runner.device = None, 8, torch.device("cpu")
    runner.model_config = SimpleNamespace(dtype=torch.float32)
    runner.model = SimpleNamespace(
        make_empty_intermediate_tensors=make_empty_intermediate_tensors_factory(["hidden_states", "residual"], 4))
    return runner


def received() -> Any:
    import torch
    from vllm.sequence import IntermediateTensors

    return IntermediateTensors({"hidden_states": torch.ones(3, 4), "residual": torch.full((3, 4), 2.0)})


def test_without_the_plugin_a_later_stage_fails_its_first_step(runner_class: Any) -> None:
    with pytest.raises(AssertionError):
        later_stage(runner_class).sync_and_gather_intermediate_tensors(3, received(), True)


def test_in_a_worker_process_a_later_stage_takes_its_input(runner_class: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(multiprocessing.current_process(), "name", "VllmWorker-1")
    buffer_cpu_pipeline_stages()
    runner = later_stage(runner_class)
    inputs = received()
    gathered = runner.sync_and_gather_intermediate_tensors(3, inputs, True)
    assert torch.equal(gathered["hidden_states"], inputs["hidden_states"])
    assert torch.equal(gathered["residual"], inputs["residual"])
    # The buffer is sized as vLLM's warm-up would size it, and kept for the next steps.
    assert tuple(runner.intermediate_tensors["hidden_states"].shape) == (8, 4)


def test_outside_vllms_worker_processes_nothing_changes(runner_class: Any) -> None:
    method = runner_class.sync_and_gather_intermediate_tensors
    buffer_cpu_pipeline_stages()  # this process is pytest's, not a VllmWorker
    assert runner_class.sync_and_gather_intermediate_tensors is method
