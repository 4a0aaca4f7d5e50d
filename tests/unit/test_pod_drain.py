"""The in-pod drain's decisions, with a fake Serve state and a fake clock: which replicas are on this node,
when the wait ends, and that nothing is drained when no replica runs here."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cluster import pod_drain
from cluster.cli import app
from cluster.pod_drain import DrainResult, NodeMatch, node_ids_of, replicas_on_node, wait_until_drained

HERE, THERE = "node-here", "node-there"
HERE_IP, THERE_IP = "10.0.0.5", "10.0.0.6"


def replica(replica_id: str, state: str, node_id: str | None, node_ip: str | None = None) -> dict[str, Any]:
    return {"replica_id": replica_id, "state": state, "node_id": node_id, "node_ip": node_ip}


def details(*replicas: dict[str, Any], deployment: str = "model-qwen") -> dict[str, Any]:
    """Serve's details document (GET /api/serve/applications/), reduced to what the drain reads."""
    return {"applications": {"app": {"deployments": {deployment: {"name": deployment, "replicas": list(replicas)}}}}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reads(*documents: dict[str, Any] | Exception):
    """A reader that answers `documents` in turn, the last one for good; an Exception is raised instead."""
    answers = list(documents)

    def read() -> dict[str, Any]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer
    return read


def test_every_replica_on_the_node_counts_whatever_its_state() -> None:
    state = details(replica("a", "RUNNING", HERE), replica("b", "PENDING_MIGRATION", HERE),
                    replica("c", "STOPPING", HERE), replica("d", "RUNNING", THERE), replica("e", "STARTING", None))
    assert replicas_on_node(state, NodeMatch(node_id=HERE)) == (
        "model-qwen/a (RUNNING)", "model-qwen/b (PENDING_MIGRATION)", "model-qwen/c (STOPPING)")
    assert replicas_on_node({"applications": {}}, NodeMatch(node_id=HERE)) == ()


def test_a_pod_finds_its_node_by_address() -> None:
    state = details(replica("a", "RUNNING", HERE, HERE_IP), replica("b", "RUNNING", THERE, THERE_IP),
                    replica("c", "STARTING", None, None))
    assert node_ids_of(state, NodeMatch(ip=HERE_IP)) == {HERE}
    assert node_ids_of(state, NodeMatch(ip="10.0.0.9")) == set()
    assert replicas_on_node(state, NodeMatch()) == ()  # no id, no address: nothing is this node


def test_the_wait_ends_when_the_replicas_are_gone() -> None:
    clock = FakeClock()
    read = reads(details(replica("a", "PENDING_MIGRATION", HERE)), details(replica("a", "STOPPING", HERE)),
                 details(replica("b", "RUNNING", THERE)))
    result = wait_until_drained(read, NodeMatch(node_id=HERE), timeout_s=60, clock=clock, sleep=clock.sleep,
                                poll_s=2)
    assert result == DrainResult(left=(), waited_s=4) and result.drained


def test_a_failed_read_is_retried_never_taken_for_drained() -> None:
    clock = FakeClock()
    read = reads(OSError("connection refused"), details(replica("a", "STOPPING", HERE)), details())
    result = wait_until_drained(read, NodeMatch(node_id=HERE), timeout_s=60, clock=clock, sleep=clock.sleep,
                                poll_s=2)
    assert result.drained and result.waited_s == 4


def test_the_wait_gives_up_at_the_deadline_naming_what_is_left() -> None:
    clock = FakeClock()
    result = wait_until_drained(reads(details(replica("a", "STOPPING", HERE))), NodeMatch(node_id=HERE),
                                timeout_s=30, clock=clock, sleep=clock.sleep, poll_s=2)
    assert not result.drained and result.left == ("model-qwen/a (STOPPING)",)
    assert 28 <= result.waited_s <= 30
    unreadable = wait_until_drained(reads(OSError("head gone")), NodeMatch(node_id=HERE), timeout_s=10,
                                    clock=clock, sleep=clock.sleep, poll_s=2)
    assert not unreadable.drained and unreadable.waited_s <= 10


def test_the_drain_is_a_preemption_with_the_deadline() -> None:
    command = pod_drain.drain_command(180, "pod w-1 is stopping", HERE, None)
    assert command[command.index("drain-node") + 1:] == [
        "--node-id", HERE, "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "pod w-1 is stopping",
        "--deadline-remaining-seconds", "180"]
    assert pod_drain.drain_command(180, "m", HERE, "10.0.0.1:6379")[-2:] == ["--address", "10.0.0.1:6379"]


@pytest.fixture
def serve_state(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Serve's state with replicas on HERE and THERE at this pod's address; the drain commands run, recorded."""
    ran: list[list[str]] = []
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: HERE_IP)
    monkeypatch.setattr(pod_drain.subprocess, "run", lambda command, **_: ran.append(command))
    return ran


def test_a_node_without_replicas_is_not_drained(serve_state: list[list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state = details(replica("b", "RUNNING", THERE, THERE_IP))
    monkeypatch.setattr(pod_drain, "serve_details_reader", lambda url: reads(state))
    assert pod_drain.drain_node("http://head:8265", 180).drained
    assert serve_state == []


def test_the_node_at_this_address_is_drained_and_waited_for(serve_state: list[list[str]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    state = reads(details(replica("a", "RUNNING", HERE, HERE_IP)), details())
    monkeypatch.setattr(pod_drain, "serve_details_reader", lambda url: state)
    assert pod_drain.drain_node("http://head:8265", 180).drained
    (command,) = serve_state
    assert command[command.index("--node-id") + 1] == HERE


def test_two_nodes_at_one_address_need_the_node_id(serve_state: list[list[str]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = details(replica("a", "RUNNING", HERE, HERE_IP), replica("b", "RUNNING", THERE, HERE_IP))
    monkeypatch.setattr(pod_drain, "serve_details_reader", lambda url: reads(state))
    with pytest.raises(RuntimeError, match="pass the node id"):
        pod_drain.drain_node("http://head:8265", 180)
    assert serve_state == []


@pytest.mark.parametrize(("result", "status"), [
    (DrainResult((), 12.0), 0), (DrainResult(("model-qwen/a (STOPPING)",), 180.0), 1), (OSError("refused"), 2)])
def test_drain_node_exit_status(result: DrainResult | Exception, status: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def drain(*args: Any, **kwargs: Any) -> DrainResult:
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(pod_drain, "drain_node", drain)
    outcome = CliRunner().invoke(app, ["drain-node", "--dashboard", "http://head:8265", "--deadline-s", "180"])
    assert outcome.exit_code == status, outcome.output
