"""Engine processes die with their parent: the parent-death signal, and the vLLM plugin that arms it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue

import psutil
import pytest

from serve_app.process_fate import die_with_parent
from serve_app.vllm_adapter import fate_share_engine_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux parent-death signal")

SPAWN = multiprocessing.get_context("spawn")  # as vLLM starts its engine processes inside a Ray actor


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _engine_like(armed: Queue) -> None:
    fate_share_engine_process()  # what vLLM's plugin loader calls early in each of its processes
    armed.put(os.getpid())
    time.sleep(120)


def _parent(child_name: str, armed: Queue) -> None:
    SPAWN.Process(target=_engine_like, args=(armed,), name=child_name).start()
    time.sleep(120)


@pytest.fixture
def family() -> Iterator[list[multiprocessing.Process | int]]:
    """Started processes; whatever is still alive at the end is killed (the test started it)."""
    started: list[multiprocessing.Process | int] = []
    yield started
    for proc in started:
        pid = proc if isinstance(proc, int) else proc.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass


def _child_of_killed_parent(child_name: str, family: list[multiprocessing.Process | int]) -> int:
    """Starts parent -> child (named `child_name`), SIGKILLs the parent; the child's pid."""
    armed: Queue = SPAWN.Queue()
    parent = SPAWN.Process(target=_parent, args=(child_name, armed))
    parent.start()
    family.append(parent)
    child = armed.get(timeout=60)
    family.append(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    return child


@pytest.mark.parametrize("name", ["EngineCore", "EngineCore_DP1", "VllmWorker-1"])
def test_an_engine_process_dies_with_its_parent(name: str, family: list) -> None:
    assert _gone(_child_of_killed_parent(name, family), within_s=5)


def test_other_children_are_left_alone(family: list) -> None:
    assert not _gone(_child_of_killed_parent("SomethingElse", family), within_s=1)


def test_a_process_orphaned_before_arming_ends_at_once(family: list) -> None:
    # Its parent is some other process: as if the real one died between the fork and the prctl call.
    child = SPAWN.Process(target=die_with_parent, args=(os.getpid() + 1_000_000,))
    child.start()
    family.append(child)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL


def test_the_plugin_is_a_no_op_outside_multiprocessing() -> None:
    fate_share_engine_process()  # this process has no multiprocessing parent: nothing is armed
    assert os.getppid() > 0
