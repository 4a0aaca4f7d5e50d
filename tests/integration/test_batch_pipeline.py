"""The batch pipeline on a real local Ray cluster with a fake engine: every line answered once, resumable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cluster.batch import BatchError, run_batch
from serve_app.config import load_config
from tests.batch_fakes import FAKE_CONTEXT_WORDS, FakeBatchEngine
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "local.yaml"
GOOD = 90
BAD = {"line-91": "invalid_json", "extra": "unknown_field", "q0": "duplicate_custom_id", "long": "invalid_request"}


def write_input(path: Path) -> None:
    lines = []
    for i in range(GOOD):
        if i % 3 == 0:
            lines.append({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"messages": [{"role": "user", "content": f"hello {i}"}]}})
        elif i % 3 == 1:
            lines.append({"prompt": f"count {i}", "max_tokens": 4})
        else:
            lines.append({"messages": [{"role": "user", "content": f"hi {i}"}]})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += "{this is not json\n"
    text += json.dumps({"custom_id": "extra", "url": "/v1/completions", "body": {"prompt": "a"}, "x": 1}) + "\n"
    text += json.dumps({"custom_id": "q0", "url": "/v1/completions", "body": {"prompt": "again"}}) + "\n"
    text += json.dumps({"custom_id": "long", "url": "/v1/completions",
                        "body": {"prompt": "word " * (FAKE_CONTEXT_WORDS + 1)}}) + "\n"
    path.write_text(text + "\n")


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_complete(rows: list[dict]) -> None:
    ids = Counter(row["id"] for row in rows)
    assert len(rows) == GOOD + len(BAD) and max(ids.values()) == 1
    errors = {row["custom_id"]: row["error"]["code"] for row in rows if row["error"]}
    assert errors == BAD
    answered = {row["custom_id"] for row in rows if row["response"] and row["response"]["status_code"] == 200}
    assert answered == {f"q{i}" for i in range(0, GOOD, 3)} | {f"line-{i + 1}" for i in range(GOOD) if i % 3}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("batch")
    source, out = folder / "in.jsonl", folder / "out.jsonl"
    write_input(source)
    summary = run_batch(CONFIG, "smollm2", source, out, quiet=True, engine_cls=FakeBatchEngine)
    assert summary.complete and not summary.interrupted
    assert (summary.answered, summary.failed, summary.resumed) == (GOOD + len(BAD), len(BAD), 0)
    return source, out


def test_every_line_is_answered_once_and_bad_lines_are_error_rows(finished: tuple[Path, Path]) -> None:
    _, out = finished
    rows = read_output(out)
    check_complete(rows)
    chat = next(row for row in rows if row["custom_id"] == "q3")
    assert chat["response"]["body"]["model"] == "smollm2"
    assert chat["response"]["body"]["choices"][0]["message"]["content"] == "hello 3"


def test_a_rerun_after_a_crash_answers_only_what_is_missing(finished: tuple[Path, Path], tmp_path: Path) -> None:
    source, complete = finished
    out = tmp_path / "out.jsonl"
    lines = complete.read_text().splitlines(keepends=True)
    kept = len(lines) // 2
    out.write_text("".join(lines[:kept]) + lines[kept][:40])  # as a kill in the middle of a write leaves it
    summary = run_batch(load_config(CONFIG), "default", source, out, quiet=True, engine_cls=FakeBatchEngine)
    assert summary.complete and (summary.resumed, summary.answered) == (kept, len(lines) - kept)
    rows = read_output(out)
    check_complete(rows)
    assert rows[:kept] == [json.loads(line) for line in lines[:kept]]


def test_a_rerun_of_a_finished_job_does_nothing(finished: tuple[Path, Path]) -> None:
    source, out = finished
    before = out.read_text()
    summary = run_batch(CONFIG, "smollm2", source, out, quiet=True, engine_cls=FakeBatchEngine)
    assert summary.complete and summary.answered == 0 and summary.resumed == GOOD + len(BAD)
    assert out.read_text() == before


def test_an_unknown_model_names_the_served_ones(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    with pytest.raises(BatchError, match="smollm2"):
        run_batch(CONFIG, "gpt-5", source, tmp_path / "out.jsonl")
