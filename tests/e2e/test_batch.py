"""`llmcluster batch` end to end on the real vLLM CPU engine: every line answered once, a crash resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT

CLI = str(Path(sys.executable).parent / "llmcluster")
CONFIG = REPO_ROOT / "configs" / "local.yaml"
# A whole run on 2 cores: Ray (~10 s), the engine (~40 s), a few hundred short answers (~30 s).
RUN_TIMEOUT_S = 420
GOOD = 240
# custom_id -> error code of the bad lines write_input adds after the good ones.
BAD = {f"line-{GOOD + 2}": "invalid_json", "extra-field": "unknown_field", "embeddings": "invalid_url",
       "c0": "duplicate_custom_id", "too-long": "invalid_request"}
TOTAL = GOOD + 1 + len(BAD)  # the good lines, the capital of France, the bad lines
TOPICS = ["rivers", "bread", "chess", "volcanoes", "owls", "trains", "tea", "glaciers", "violins", "bees",
          "deserts", "comets", "maple trees", "lighthouses", "copper", "sailing"]


def good_line(i: int) -> dict:
    """Line i: in turn an OpenAI chat line, an OpenAI completions line, a plain prompt, plain messages."""
    topic = f"{TOPICS[i % len(TOPICS)]} (note {i})"  # every prompt differs: prefix caching is on
    sampling = {"max_tokens": 8 + i % 5, "temperature": 0}
    messages = [{"role": "user", "content": f"Write one sentence about {topic}."}]
    kind = i % 4
    if kind == 0:
        return {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "ignored", "messages": messages, **sampling}}
    if kind == 1:
        return {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                "body": {"prompt": f"A short fact about {topic}:", **sampling}}
    if kind == 2:
        return {"prompt": f"Here is a list of facts about {topic}:\n1.", **sampling}
    return {"messages": messages, **sampling}


def write_input(path: Path) -> None:
    lines = [json.dumps(good_line(i)) for i in range(GOOD)]
    lines.append(json.dumps({"custom_id": "paris", "method": "POST", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0}}))
    lines.append('{"custom_id": "broken", "url": ')  # line GOOD + 2
    lines.append(json.dumps({"custom_id": "extra-field", "method": "POST", "url": "/v1/completions",
                             "body": {"prompt": "hi"}, "priority": "high"}))
    lines.append(json.dumps({"custom_id": "embeddings", "method": "POST", "url": "/v1/embeddings",
                             "body": {"input": "hi"}}))
    lines.append(json.dumps({"custom_id": "c0", "method": "POST", "url": "/v1/completions",
                             "body": {"prompt": "again", "max_tokens": 4}}))
    # Far past the demo config's max_model_len of 4096 tokens.
    lines.append(json.dumps({"custom_id": "too-long", "method": "POST", "url": "/v1/completions",
                             "body": {"prompt": "word " * 6000, "max_tokens": 4}}))
    path.write_text("\n".join(lines) + "\n\n")  # a blank line is no request


def command(source: Path, out: Path, *extra: str) -> list[str]:
    return [CLI, "batch", str(CONFIG), "--model", "smollm2", "--input", str(source), "--output", str(out), *extra]


def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("RAY_ADDRESS", None)  # each run starts a Ray cluster of its own
    return environment


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def complete_lines(path: Path) -> bytes:
    """The file up to its last newline: what a resumed run must keep as it is."""
    data = path.read_bytes()
    return data[:data.rfind(b"\n") + 1]


def check_complete(rows: list[dict]) -> None:
    ids = Counter(row["id"] for row in rows)
    assert len(ids) == TOTAL and max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    errors = {row["custom_id"]: row["error"]["code"] for row in rows if row["error"]}
    assert errors == BAD
    expected = {f"c{i}" for i in range(GOOD) if i % 4 < 2} | {f"line-{i + 1}" for i in range(GOOD) if i % 4 >= 2}
    answered = {row["custom_id"]: row["response"]["body"] for row in rows if not row["error"]}
    assert answered.keys() == expected | {"paris"}
    for custom_id, body in answered.items():
        assert body["model"] == "smollm2" and body["usage"]["completion_tokens"] >= 1, (custom_id, body)


def paris_answer(rows: list[dict]) -> str:
    body = next(row for row in rows if row["custom_id"] == "paris")["response"]["body"]
    return body["choices"][0]["message"]["content"]


def wait_for_lines(path: Path, more_than: int, process: subprocess.Popen[bytes], log: Path) -> int:
    """Waits until the output holds more than `more_than` lines, and not all of them; returns how many."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the job ended (rc {process.returncode}) before it could be stopped:\n" \
                                       + log.read_text(errors="replace")[-3000:]
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines > more_than:
            assert lines < TOTAL, "every answer came at once: nothing left to resume"
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no new answers in {RUN_TIMEOUT_S}s:\n" + log.read_text(errors="replace")[-3000:])


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def left_behind(tree: list[psutil.Process], group: int) -> list[str]:
    """Processes of the job still alive: its tree as it was, and any other member of its process group."""
    _, alive = psutil.wait_procs(tree, timeout=30)
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group and proc not in alive:
                alive.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()  # ours: the test started it
        except psutil.NoSuchProcess:
            pass
    return described


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch-input") / "requests.jsonl"
    write_input(path)
    return path


def test_batch_killed_then_stopped_then_rerun_answers_every_line_once(source: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "answers.jsonl", tmp_path / "batch.log"
    # Few requests in flight, so answers come out block by block and the job can be caught halfway.
    slow = command(source, out, "--quiet", "--max-in-flight", "4")

    # A crash: SIGKILL to the whole process group, Ray and the engine included.
    with log.open("wb") as sink:
        crashed = subprocess.Popen(slow, cwd=REPO_ROOT, env=env(), stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        at_kill = wait_for_lines(out, 0, crashed, log)
        tree = process_tree(crashed.pid)
        os.killpg(crashed.pid, signal.SIGKILL)
    finally:
        crashed.kill()
        crashed.wait()
    assert left_behind(tree, crashed.pid) == []
    kept = complete_lines(out)
    print(f"\nkilled with {at_kill} answers written")

    # Stopped: SIGTERM to the job's process only, as Kubernetes stops a pod; it saves and exits 130.
    with log.open("wb") as sink:
        stopped = subprocess.Popen(slow, cwd=REPO_ROOT, env=env(), stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        at_stop = wait_for_lines(out, kept.count(b"\n"), stopped, log)
        tree = process_tree(stopped.pid)
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(120) == 130, log.read_text(errors="replace")[-3000:]
    finally:
        if stopped.poll() is None:
            os.killpg(stopped.pid, signal.SIGKILL)
            stopped.wait()
    assert left_behind(tree, stopped.pid) == []
    assert "batch interrupted" in log.read_text(errors="replace")
    assert out.read_bytes().startswith(kept)
    kept = out.read_bytes()
    assert kept.endswith(b"\n")  # a stop waits for the block being written
    print(f"stopped with {at_stop} answers written")

    # The rerun answers only what is missing, with a live progress bar and the final summary.
    started = time.monotonic()
    result = subprocess.run(command(source, out), cwd=REPO_ROOT, env=env(), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)
    print(f"rerun: the other {TOTAL - at_stop} requests in {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stderr[-4000:]
    done_before = len(kept.splitlines())
    summary = " ".join(result.stdout.split())  # the summary is wrapped to the width of a terminal
    assert f"batch complete: {TOTAL - done_before} requests answered" in summary and "output tokens/s" in summary
    assert f"{done_before} done by earlier runs, 0 left of {TOTAL}" in summary
    assert out.read_bytes().startswith(kept)
    rows = read_rows(out)
    check_complete(rows)
    check_answers(rows)


def check_answers(rows: list[dict]) -> None:
    """The answers make sense and each bad line says what is wrong with it."""
    assert "Paris" in paris_answer(rows)
    by_id = {row["custom_id"]: row for row in rows if row["custom_id"] != "c0"}  # c0 is answered and repeated
    assert by_id["c4"]["response"]["body"]["object"] == "chat.completion"
    assert by_id["c5"]["response"]["body"]["object"] == "text_completion"
    assert by_id["line-3"]["response"]["body"]["object"] == "text_completion"  # plain prompt, good line 2
    assert by_id["line-4"]["response"]["body"]["object"] == "chat.completion"  # plain messages, good line 3
    assert by_id["line-4"]["response"]["body"]["usage"]["completion_tokens"] <= 8 + 3 % 5
    assert by_id[f"line-{GOOD + 2}"]["response"] is None
    assert "not valid JSON" in by_id[f"line-{GOOD + 2}"]["error"]["message"]
    assert "priority" in by_id["extra-field"]["error"]["message"]
    assert "/v1/embeddings" in by_id["embeddings"]["error"]["message"]
    assert by_id["too-long"]["response"]["status_code"] == 400
    assert "maximum context length is 4096" in by_id["too-long"]["error"]["message"]
