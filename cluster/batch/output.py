"""Output lines of a batch job in the OpenAI batch output format, and the append-only file they go to."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

ID_PREFIX = "batch_req_"


def output_id(custom_id: str, occurrence: int = 0) -> str:
    """The `id` of the answer to a line, the same on every run so a rerun can tell what is done.

    `occurrence` counts earlier lines with the same custom_id: a repeated id still gets an answer of its own."""
    key = custom_id if occurrence == 0 else f"{custom_id}\n{occurrence}"
    return ID_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:24]


def answer_row(row_id: str, custom_id: str, request_id: str, status: int,
               body: dict[str, Any]) -> dict[str, Any]:
    """The output line of a request the engine answered, with the body the API would have returned."""
    error = None
    if status != 200:
        detail = body.get("error", {}) if isinstance(body, dict) else {}
        error = {"code": "invalid_request" if 400 <= status < 500 else "server_error",
                 "message": detail.get("message", f"HTTP {status}")}
    return {"id": row_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": error}


def error_row(row_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """The output line of a line that never reached the engine."""
    return {"id": row_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def encode(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


class OutputWriter:
    """Appends lines to the output file; each block is on disk before `write` returns, so a kill loses none."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
