"""Resuming a batch job: which answers an existing output file already holds, after repairing a cut last line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)


class OutputFileError(ValueError):
    """An output file that is not one a batch job wrote; it is left untouched."""


def answered_ids(path: Path) -> set[str]:
    """The `id` of every complete line of the output file at `path` (none when it does not exist).

    Lines are appended whole and synced, so a kill can only cut the last one short: that line is cut off the
    file here and its request runs again. Any other line that is not an output line is an error."""
    if not path.exists():
        return set()
    ids: set[str] = set()
    with path.open("rb+") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            if not raw.endswith(b"\n"):
                _cut_tail(file, path, offset, len(raw))
                break
            offset += len(raw)
            if raw.strip():
                ids.add(_row_id(raw, number, path))
    return ids


def _row_id(raw: bytes, number: int, path: Path) -> str:
    try:
        row = json.loads(raw)
    except ValueError:
        row = None
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "custom_id" not in row:
        raise OutputFileError(f"line {number} of {path} is not a batch output line; give --output a new file, "
                              "or the output of an earlier run of this job to resume it")
    return row["id"]


def _cut_tail(file: BinaryIO, path: Path, offset: int, length: int) -> None:
    logger.warning("%s ends in a half-written line (%d bytes, from an interrupted run): dropping it; "
                   "its request runs again", path, length)
    file.truncate(offset)
    file.flush()
    os.fsync(file.fileno())
