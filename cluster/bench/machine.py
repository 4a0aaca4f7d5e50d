"""The machine a benchmark ran on, as its results record it: speeds compare only within one machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def cpu_class(flags: set[str]) -> str:
    """The instruction set that decides the CPU engine's speed: without AVX-512 BF16, bf16 matmuls fall back."""
    for name in ("avx512_bf16", "avx512f", "avx2"):
        if name in flags:
            return name
    return "other"


def machine() -> dict[str, Any]:
    model, flags = "unknown CPU", set()
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the class stays unknown
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = _gpus()
    summary = f"{cores} cores of {model} ({cpu_class(flags)})" + (f", {len(gpus)}x {gpus[0]}" if gpus else "")
    return {"summary": summary, "cpu": model, "cpu_class": cpu_class(flags), "cores": cores, "gpus": gpus}


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]
