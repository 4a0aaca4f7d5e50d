"""Resuming a batch job: answered ids come from the output (a cut last line is repaired), the plan skips them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.batch.output import encode, error_row, output_id
from cluster.batch.plan import plan_batch
from cluster.batch.resume import OutputFileError, answered_ids


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def out_line(custom_id: str, occurrence: int = 0) -> str:
    return encode(error_row(output_id(custom_id, occurrence), custom_id, "x", "y"))


def test_no_output_file_means_nothing_answered(tmp_path: Path) -> None:
    assert answered_ids(tmp_path / "missing.jsonl") == set()


def test_answered_ids_are_the_output_ids(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(out_line("a") + "\n" + out_line("b") + "\n\n")
    assert answered_ids(out) == {output_id("a"), output_id("b")}


def test_a_half_written_last_line_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = out_line("a") + "\n"
    out.write_text(whole + out_line("b")[:25])
    assert answered_ids(out) == {output_id("a")}
    assert out.read_text() == whole
    # Appending after the repair gives well-formed lines.
    with out.open("a") as file:
        file.write(out_line("b") + "\n")
    assert answered_ids(out) == {output_id("a"), output_id("b")}


def test_a_complete_line_missing_only_its_newline_is_run_again(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(out_line("a") + "\n" + out_line("b"))
    assert answered_ids(out) == {output_id("a")}


@pytest.mark.parametrize("bad", ["not json at all", json.dumps({"hello": 1}), json.dumps([1])])
def test_a_file_that_is_no_batch_output_is_refused_untouched(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out.jsonl"
    content = out_line("a") + "\n" + bad + "\n"
    out.write_text(content)
    with pytest.raises(OutputFileError, match="line 2"):
        answered_ids(out)
    assert out.read_text() == content


def test_output_ids_are_stable_and_distinct_per_occurrence() -> None:
    assert output_id("a") == output_id("a")
    assert output_id("a").startswith("batch_req_")
    assert len({output_id("a"), output_id("b"), output_id("a", 1), output_id("a", 2)}) == 4


def requests(n: int) -> list[dict]:
    return [{"prompt": f"p{i}"} for i in range(n)]


def test_plan_counts_requests_and_skips_blank_lines(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b"}\n')
    plan = plan_batch(source, set(), chunk_lines=32)
    assert (plan.total, plan.answered, plan.remaining) == (2, 0, 2)
    assert [chunk.todo for chunk in plan.chunks] == [(1, 4)]


def test_plan_chunks_cover_every_line_once_and_read_back_the_right_lines(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_lines(source, requests(10))
    plan = plan_batch(source, set(), chunk_lines=3)
    assert [chunk.todo for chunk in plan.chunks] == [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10,)]
    read = [(number, json.loads(raw)) for chunk in plan.chunks for number, raw in chunk.lines(source)]
    assert read == [(i + 1, {"prompt": f"p{i}"}) for i in range(10)]


def test_plan_skips_answered_lines_and_drops_chunks_with_nothing_left(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_lines(source, requests(6))
    answered = {output_id(f"line-{n}") for n in (1, 2, 3, 5)}
    plan = plan_batch(source, answered, chunk_lines=3)
    assert (plan.total, plan.answered, plan.remaining) == (6, 4, 2)
    assert [chunk.todo for chunk in plan.chunks] == [(4, 6)]
    assert [number for chunk in plan.chunks for number, _ in chunk.lines(source)] == [4, 6]


def test_repeated_custom_ids_are_marked_with_their_first_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    line = {"custom_id": "same", "url": "/v1/completions", "body": {"prompt": "x"}}
    write_lines(source, [line, {"prompt": "y"}, line, line])
    plan = plan_batch(source, set())
    (chunk,) = plan.chunks
    assert chunk.todo == (1, 2, 3, 4)
    assert [chunk.repeat_of(n) for n in (1, 2, 3, 4)] == [(0, 1), (0, 2), (1, 1), (2, 1)]


def test_a_repeat_answered_earlier_is_skipped_on_its_own(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    line = {"custom_id": "same", "url": "/v1/completions", "body": {"prompt": "x"}}
    write_lines(source, [line, line])
    plan = plan_batch(source, {output_id("same")})
    assert [chunk.todo for chunk in plan.chunks] == [(2,)]


def test_chunks_survive_the_trip_through_ray_data(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    line = {"custom_id": "same", "url": "/v1/completions", "body": {"prompt": "x"}}
    write_lines(source, [line, line])
    (chunk,) = plan_batch(source, set()).chunks
    assert type(chunk).from_json(chunk.to_json()) == chunk
