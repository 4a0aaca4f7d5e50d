"""A process the benchmark starts, with its whole tree: stopped politely, then killed, whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

POLL_S = 0.5
# SIGKILL is not instant: the kernel still tears the process down.
KILL_WAIT_S = 10.0


class ProcessGoneError(RuntimeError):
    """The process ended while it was still needed."""


class Child:
    """A command run in its own session, its output in `log`.

    Its own session: a Ctrl-C at the terminal reaches the benchmark alone, which then stops each child in order
    (a server drains, its engine shuts down) instead of every process dying at once in no order."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.command = command
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                            start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants now."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout_s: float, what: str) -> int:
        """The exit code; ProcessGoneError naming `what` past `timeout_s` (the process is left running)."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise ProcessGoneError(f"{what} did not finish within {timeout_s:.0f}s; see {self.log}") from None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Return once `ready()`; ProcessGoneError when the process exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not self.running():
                raise ProcessGoneError(f"{what} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ProcessGoneError(f"{what} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(POLL_S)

    def stop(self, grace_s: float) -> list[str]:
        """SIGTERM, up to `grace_s` for the tree to end, then SIGKILL to what is left of it (a second Ctrl-C
        skips the wait). Returns the processes that had to be killed."""
        tree = self.tree()
        try:
            if self.running():
                os.kill(self.pid, signal.SIGTERM)
            _wait_gone(tree, grace_s)
        finally:
            killed = _kill(tree)
            _wait_gone(tree, KILL_WAIT_S)  # gone when this returns: the next server must not share the cores
            self.process.wait()
        return killed

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: an orphan's exit status may wait long for init to collect it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(proc) for proc in procs) and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)


def _kill(procs: list[psutil.Process]) -> list[str]:
    killed = []
    for proc in procs:
        if not _alive(proc):
            continue
        try:
            killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            proc.kill()
        except psutil.Error:  # gone meanwhile
            pass
    return killed
