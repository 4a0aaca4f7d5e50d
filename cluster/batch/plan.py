"""Planning a batch job: which input lines still need an answer, in chunks that Ray Data reads in parallel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.batch.output import output_id
from cluster.batch.requests import custom_id_of

# Lines per read task, and so rows per block: small enough for steady progress and short resume losses.
CHUNK_LINES = 32


@dataclass(frozen=True)
class Chunk:
    """A run of input lines: where it lies in the file and which of its lines still need answers."""

    start: int  # byte offset of its first line
    end: int
    first_line: int  # 1-based number of its first line
    todo: tuple[int, ...]
    # (line, occurrence, first line) of lines whose custom_id an earlier line already used.
    repeats: tuple[tuple[int, int, int], ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Chunk:
        data = json.loads(text)
        return cls(data["start"], data["end"], data["first_line"], tuple(data["todo"]),
                   tuple(tuple(r) for r in data["repeats"]))

    def lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line) of each line still to answer."""
        with path.open("rb") as file:
            file.seek(self.start)
            data = file.read(self.end - self.start)
        todo = set(self.todo)
        for number, raw in enumerate(data.split(b"\n"), start=self.first_line):
            if number in todo:
                yield number, raw

    def repeat_of(self, line: int) -> tuple[int, int]:
        """(occurrence, first line) of a line reusing a custom_id; (0, line) for a first use."""
        for repeat_line, occurrence, first in self.repeats:
            if repeat_line == line:
                return occurrence, first
        return 0, line


@dataclass(frozen=True)
class BatchPlan:
    total: int  # requests in the input (blank lines are none)
    answered: int  # of those, already in the output
    chunks: tuple[Chunk, ...]

    @property
    def remaining(self) -> int:
        return self.total - self.answered


def plan_batch(input_path: Path, answered: set[str], chunk_lines: int = CHUNK_LINES) -> BatchPlan:
    """Scan the input once: count its requests, find repeated custom_ids, and leave out lines answered already."""
    counts: dict[str, int] = {}
    first_lines: dict[str, int] = {}
    chunks: list[Chunk] = []
    total = done = 0
    builder = _ChunkBuilder(chunk_lines)
    with input_path.open("rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            builder.add_line(number, offset)
            offset += len(raw)
            if raw.strip():
                total += 1
                custom_id = custom_id_of(raw, number)
                occurrence = counts.get(custom_id, 0)
                counts[custom_id] = occurrence + 1
                first = first_lines.setdefault(custom_id, number)
                if output_id(custom_id, occurrence) in answered:
                    done += 1
                else:
                    builder.add_todo(number, occurrence, first)
            if builder.full():
                chunks.extend(builder.close(offset))
    chunks.extend(builder.close(offset))
    return BatchPlan(total, done, tuple(chunks))


class _ChunkBuilder:
    def __init__(self, chunk_lines: int) -> None:
        self._chunk_lines = chunk_lines
        self._reset()

    def _reset(self) -> None:
        self._start: int | None = None
        self._first_line = 0
        self._lines = 0
        self._todo: list[int] = []
        self._repeats: list[tuple[int, int, int]] = []

    def add_line(self, number: int, offset: int) -> None:
        if self._start is None:
            self._start, self._first_line = offset, number
        self._lines += 1

    def add_todo(self, number: int, occurrence: int, first: int) -> None:
        self._todo.append(number)
        if occurrence:
            self._repeats.append((number, occurrence, first))

    def full(self) -> bool:
        return self._lines >= self._chunk_lines

    def close(self, end: int) -> list[Chunk]:
        """The chunk built so far, unless nothing in it needs an answer."""
        chunk = [Chunk(self._start, end, self._first_line, tuple(self._todo), tuple(self._repeats))] \
            if self._todo and self._start is not None else []
        self._reset()
        return chunk
