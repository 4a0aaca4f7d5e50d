"""Failover on the real stack: a replica of the demo model SIGKILLed under load loses no request and no stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from cluster.ray_session import recorded_local_cluster
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import CLI, STOP_TIMEOUT_S, Server, start_server, stop_server
from tests.processes import kill_all, outliving, process_tree

APP = "failover"
DEPLOYMENT = "model-smollm2"
ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "kv_cache_memory_bytes": 1 << 29}
STREAMS, REQUESTS = 10, 50
STREAM_TOKENS = 96
# Long enough to still be streaming when `llmcluster shutdown` has joined Ray and deleted the application.
DRAINED_STREAM_TOKENS = 400


@pytest.fixture(scope="module")
def failover_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("failover")
    config = {"cluster": {"name": APP}, "router": {"cpus": 0.25, "max_attempts": 3},
              "models": [{"name": "smollm2", "source": "builtin:smollm2-135m-instruct", "engine": ENGINE,
                          "resources": {"device": "cpu", "cpus_per_worker": 0.5},
                          "autoscaling": {"min_replicas": 2, "max_replicas": 2}}]}
    (folder / "failover.yaml").write_text(yaml.safe_dump(config))
    running = start_server(folder / "failover.yaml", folder / "serve.log")
    yield running
    assert stop_server(running) == 0, running.log_tail()  # at once, when the last test has shut it down


@dataclass
class StreamRecord:
    ids: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: bool = False


def stream_one(base_url: str, prompt: str, record: StreamRecord, tokens: int = STREAM_TOKENS) -> None:
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base_url}/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            payload = line.removeprefix("data: ")
            if payload == "[DONE]":
                record.done = True
            elif payload.startswith("{"):
                event = json.loads(payload)
                if "error" in event:
                    record.errors.append(event["error"]["message"])
                else:
                    record.ids.add(event["id"])
                    record.text.append(event["choices"][0]["text"])


def ask_one(client: httpx.Client, base_url: str, index: int, outcomes: list[tuple[int, float]]) -> None:
    started = time.monotonic()
    response = client.post(f"{base_url}/chat/completions", timeout=300, json={
        "model": "smollm2", "messages": [{"role": "user", "content": f"Say a number above {index}."}],
        "max_tokens": 24, "min_tokens": 24, "temperature": 0})
    outcomes.append((response.status_code, time.monotonic() - started))


def replica_pids() -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if f"ServeReplica:{APP}:{DEPLOYMENT}" in line]


def test_a_replica_killed_under_load_loses_no_request_and_no_stream(failover_server: Server) -> None:
    base_url = failover_server.base_url
    records = [StreamRecord() for _ in range(STREAMS)]
    outcomes: list[tuple[int, float]] = []
    with httpx.Client(limits=httpx.Limits(max_connections=REQUESTS)) as client:
        threads = [threading.Thread(target=stream_one, args=(base_url, f"Story {i}: once upon a time", record))
                   for i, record in enumerate(records)]
        threads += [threading.Thread(target=ask_one, args=(client, base_url, i, outcomes)) for i in range(REQUESTS)]
        for thread in threads:
            thread.start()
        _wait_until(lambda: all(len(r.text) >= 3 for r in records), seconds=180)
        victims = replica_pids()
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        killed_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=300)
    statuses = [status for status, _ in outcomes]
    slowest = max(seconds for _, seconds in outcomes)
    print(f"\nreplica {victims[0]} SIGKILLed under load: {statuses.count(200)}/{REQUESTS} requests answered "
          f"(slowest {slowest:.1f}s), {sum(r.done and not r.errors for r in records)}/{STREAMS} streams completed; "
          f"last answer {time.monotonic() - killed_at:.1f}s after the kill")
    assert statuses == [200] * REQUESTS
    for record in records:
        assert record.done and not record.errors, record.errors
        assert len(record.ids) == 1, "a continued stream keeps its id"
        assert len(record.text) >= STREAM_TOKENS - 2, "the continuation brings the stream to its length"
    # The kill must really have cut streams: the router says so in its log, once per continued stream.
    continued = failover_server.log.read_text(errors="replace").count("continues on another replica")
    print(f"{continued} streams continued on the other replica")
    assert continued > 0


def test_shutdown_lets_a_long_stream_finish_then_serve_exits(failover_server: Server) -> None:
    """`llmcluster shutdown` while a long generation streams: the replicas drain (drain_timeout_s, 120 s by
    default), so the stream ends whole; then the foreground `llmcluster serve` exits 0 and leaves nothing."""
    recorded = recorded_local_cluster()
    assert recorded is not None and recorded.pid == failover_server.process.pid, "not this stack's record"
    tree = process_tree(failover_server.process.pid)
    record = StreamRecord()
    stream = threading.Thread(target=stream_one, args=(failover_server.base_url, "A long story:", record),
                              kwargs={"tokens": DRAINED_STREAM_TOKENS})
    stream.start()
    _wait_until(lambda: len(record.text) >= 3, seconds=120)
    at_shutdown, started = len(record.text), time.monotonic()
    shutdown = subprocess.Popen([CLI, "shutdown"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    assert shutdown.stdout is not None and shutdown.stdout.readline().startswith("removing failover")
    at_removal = len(record.text)  # the application is being deleted now: the stream must still be going
    stream.join(timeout=300)
    stream_ended = time.monotonic() - started
    out, err = shutdown.communicate(timeout=600)
    out = f"removing failover ...\n{out}"
    removed_after = time.monotonic() - started
    code = failover_server.process.wait(STOP_TIMEOUT_S)
    left = outliving(tree, 30)
    print(f"\nshutdown with a stream at token {at_shutdown} of {DRAINED_STREAM_TOKENS} (at {at_removal} when the "
          f"application's removal began): the stream ended whole "
          f"{stream_ended:.1f}s later, the application was removed after {removed_after:.1f}s, serve exited {code} "
          f"after {time.monotonic() - started:.1f}s")
    assert shutdown.returncode == 0 and "removed failover" in out, err[-2000:]
    assert record.done and not record.errors, record.errors
    assert at_removal < DRAINED_STREAM_TOKENS - 2, "the stream ended before the removal began: nothing to drain"
    assert len(record.text) >= DRAINED_STREAM_TOKENS - 2, "the drain let the stream finish"
    assert code == 0, failover_server.log_tail()
    assert not left, f"outlived the run: {kill_all(left)}"


def _wait_until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the load did not get going"
        time.sleep(0.2)
