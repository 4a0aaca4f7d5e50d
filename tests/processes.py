"""The processes a test started: a snapshot of a process tree, and which of them outlive a deadline."""

from __future__ import annotations

import time

import psutil


def title(proc: psutil.Process) -> str:
    """The command line as `ps` shows it: Ray's and vLLM's processes rename themselves (ray::..., VLLM::...)."""
    try:
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return ""


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's exit status waits for init to collect it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def outliving(procs: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    """Those of `procs` still alive after `within_s`; returns as soon as none is."""
    deadline = time.monotonic() + within_s
    while True:
        left = [proc for proc in procs if alive(proc)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill_all(procs: list[psutil.Process]) -> list[str]:
    """SIGKILL whatever of `procs` is alive (the test started them); what it killed, described."""
    killed = []
    for proc in procs:
        if alive(proc):
            killed.append(f"{proc.pid} {title(proc)[:100]}")
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    return killed
