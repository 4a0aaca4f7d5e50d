"""Tying a child process's life to its parent's, with Linux's parent-death signal."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@cache
def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> bool:
    """Have the kernel send `signum` to this process when its parent dies; False where it cannot (not Linux).

    Must run in the child. The kernel watches the parent *thread* that started this process, so the parent
    must start it from a thread that lives as long as the parent does (a main thread or an event loop's).
    A parent already gone by now would never send the signal: then this process ends at once instead."""
    prctl = _prctl()
    if prctl is None:
        return False
    if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    if os.getppid() != parent_pid:  # orphaned before the signal was armed: adopted by init or a subreaper
        os.kill(os.getpid(), signum)
    return True
