"""Batch output rows, the rows the read stage makes, engine-actor placement, and the progress arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cluster.batch.output import OutputWriter, answer_row, encode, error_row, output_id
from cluster.batch.pipeline import engine_placement, read_requests, replica_range, request_row
from cluster.batch.plan import plan_batch
from cluster.batch.progress import Tally
from cluster.batch.requests import parse_line
from serve_app.config import ModelConfig

CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "model": "smollm2",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}


def test_an_answer_has_the_openai_batch_output_shape() -> None:
    row = json.loads(encode(answer_row("batch_req_1", "q1", "req_1", 200, CHAT)))
    assert row == {"id": "batch_req_1", "custom_id": "q1",
                   "response": {"status_code": 200, "request_id": "req_1", "body": CHAT}, "error": None}


def test_an_engine_error_keeps_its_body_and_names_the_error() -> None:
    body = {"error": {"message": "maximum context length is 4096 tokens", "type": "BadRequestError", "code": 400}}
    row = answer_row("batch_req_2", "q2", "req_2", 400, body)
    assert row["response"] == {"status_code": 400, "request_id": "req_2", "body": body}
    assert row["error"] == {"code": "invalid_request", "message": "maximum context length is 4096 tokens"}


def test_a_line_that_never_reached_the_engine_has_no_response() -> None:
    row = error_row("batch_req_3", "line-3", "invalid_json", "line 3 is not valid JSON")
    assert row == {"id": "batch_req_3", "custom_id": "line-3", "response": None,
                   "error": {"code": "invalid_json", "message": "line 3 is not valid JSON"}}


def test_encoding_is_one_line_and_keeps_unicode() -> None:
    text = encode(answer_row("i", "c", "r", 200, {"text": "Zürich\nline two"}))
    assert "\n" not in text and "Zürich" in text


def test_writer_appends_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("earlier\n")
    with OutputWriter(out) as writer:
        writer.write(["a", "b"])
        writer.write([])
        writer.write(["c"])
    assert out.read_text() == "earlier\na\nb\nc\n"


def test_request_rows_carry_the_body_or_a_ready_error_row() -> None:
    good = request_row(parse_line('{"prompt": "hi"}', 1, "smollm2"), 0, 1)
    assert good["id"] == output_id("line-1") and good["endpoint"] == "completions" and good["output"] == ""
    assert json.loads(good["body"]) == {"prompt": "hi", "model": "smollm2"}
    bad = request_row(parse_line("{oops", 2, "smollm2"), 0, 2)
    assert bad["endpoint"] == "" and json.loads(bad["output"])["error"]["code"] == "invalid_json"


def test_a_repeated_custom_id_is_an_error_row_naming_the_first_line() -> None:
    text = '{"custom_id": "q", "url": "/v1/completions", "body": {"prompt": "x"}}'
    row = request_row(parse_line(text, 5, "m"), 1, 2)
    output = json.loads(row["output"])
    assert row["id"] == output_id("q", 1) == output["id"]
    assert output["custom_id"] == "q" and output["error"]["code"] == "duplicate_custom_id"
    assert "line 2" in output["error"]["message"]


def test_read_stage_turns_chunks_into_one_row_per_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n{bad\n\n{"messages": [{"role": "user", "content": "b"}]}\n')
    plan = plan_batch(source, set(), chunk_lines=2)
    batch = {"chunk": np.array([chunk.to_json() for chunk in plan.chunks], dtype=object)}
    rows = read_requests(batch, str(source), "smollm2")
    assert rows["custom_id"] == ["line-1", "line-2", "line-4"]
    assert rows["endpoint"] == ["completions", "", "chat"]


def model(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "source": "/models/m", **fields})


def test_a_cpu_engine_actor_reserves_a_core_per_rank_and_needs_no_placement_group() -> None:
    options, placement_fn = engine_placement(model(parallelism={"tensor": 2}))
    assert options["num_cpus"] == 2 and placement_fn is None


def test_a_gpu_engine_actor_gets_a_placement_group_shaped_like_a_serve_replica() -> None:
    options, placement_fn = engine_placement(model(parallelism={"tensor": 4, "pipeline": 2},
                                                   resources={"device": "gpu", "accelerator": "H100"}))
    assert options["num_gpus"] == 0 and placement_fn is not None
    bundles, strategy = placement_fn.args
    assert len(bundles) == 8 and all(bundle["GPU"] == 1 for bundle in bundles) and strategy == "PACK"


@pytest.mark.parametrize(("autoscaling", "expected"), [
    ({}, (1, 1)), ({"min_replicas": 0, "max_replicas": 3}, (1, 3)), ({"min_replicas": 2, "max_replicas": 4}, (2, 4))])
def test_one_engine_actor_per_replica_and_at_least_one(autoscaling: dict, expected: tuple[int, int]) -> None:
    assert replica_range(model(autoscaling=autoscaling)) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_count_from_the_first_request_not_from_engine_start() -> None:
    clock = Clock()
    tally = Tally(total=100, resumed=20, clock=clock)
    assert tally.eta_s() is None
    clock.now += 60  # engines starting: nothing counted
    tally.add(answered=10, failed=1, prompt_tokens=50, output_tokens=100, first_started=clock.now - 10)
    assert tally.throughput() == pytest.approx(10.0)
    assert tally.eta_s() == pytest.approx(70.0)  # 70 left at 1 request/s
    clock.now += 10
    tally.add(answered=10, failed=0, prompt_tokens=50, output_tokens=100, first_started=clock.now - 5)
    summary = tally.summary()
    assert summary.throughput == pytest.approx(10.0)
    assert (summary.answered, summary.failed, summary.output_tokens, summary.remaining) == (20, 1, 200, 60)
    assert summary.wall_s == pytest.approx(70.0) and not summary.complete


def test_error_rows_alone_do_not_move_the_rate_clock() -> None:
    clock = Clock()
    tally = Tally(total=1, resumed=0, clock=clock)
    clock.now += 5
    tally.add(answered=1, failed=1, prompt_tokens=0, output_tokens=0, first_started=None)
    summary = tally.summary()
    assert summary.complete and summary.throughput == 0.0
