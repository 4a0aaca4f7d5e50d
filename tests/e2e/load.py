"""Sustained client load for e2e tests: threads sending one kind of request back to back until stopped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import openai


class Traffic:
    """`workers` clients each calling `send(client)` in a loop; records when each answer or failure happened."""

    def __init__(self, base_url: str, send: Callable[[openai.OpenAI], object], workers: int,
                 timeout_s: float = 300) -> None:
        self._client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s)
        self._send = send
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[float] = []
        self._failures: list[tuple[float, str]] = []
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._send(self._client)
                with self._lock:
                    self._answers.append(time.monotonic())
            except openai.APIError as exc:
                with self._lock:
                    self._failures.append((time.monotonic(), repr(exc)))
                time.sleep(0.2)  # a failing server is not hammered

    def answered_since(self, moment: float = 0.0) -> int:
        with self._lock:
            return sum(at >= moment for at in self._answers)

    def failed_since(self, moment: float = 0.0) -> list[str]:
        with self._lock:
            return [why for at, why in self._failures if at >= moment]
