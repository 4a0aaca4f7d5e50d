"""Progress of a batch job: counts, throughput and ETA, shown live with rich or logged, and the final summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# With --quiet a progress line is logged this often.
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did. `throughput` is output tokens/s from the engines' first request to the last
    answer, so their start-up is not counted in it; `wall_s` is the whole run."""

    total: int  # requests in the input
    resumed: int  # answered by earlier runs and skipped
    answered: int  # answered by this run, failures included
    failed: int
    prompt_tokens: int
    output_tokens: int
    wall_s: float
    throughput: float
    interrupted: bool = False

    @property
    def remaining(self) -> int:
        return self.total - self.resumed - self.answered

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def lines(self) -> list[str]:
        state = "interrupted" if self.interrupted else "complete" if self.complete else "incomplete"
        lines = [f"batch {state}: {self.answered} requests answered in {self.wall_s:.1f}s "
                 f"({self.failed} failed), {self.resumed} done by earlier runs, {self.remaining} left of {self.total}",
                 f"tokens: {self.prompt_tokens} prompt, {self.output_tokens} output; "
                 f"throughput {self.throughput:.1f} output tokens/s"]
        if self.remaining:
            lines.append("rerun the same command to finish: answered requests are skipped")
        return lines


class Tally:
    """Running counts of one run. Rates count from the moment the engines took their first request (each
    answer carries when its request started), so they leave the engines' start-up out."""

    def __init__(self, total: int, resumed: int, clock: Callable[[], float] = time.time) -> None:
        self.total, self.resumed = total, resumed
        self.answered = self.failed = self.prompt_tokens = self.output_tokens = 0
        self._clock = clock
        self._started = clock()
        self._engines_busy_since: float | None = None
        self._last = self._started

    def add(self, answered: int, failed: int, prompt_tokens: int, output_tokens: int,
            first_started: float | None = None) -> None:
        """Counts a block of answers; `first_started` is when the earliest of their requests started."""
        self.answered += answered
        self.failed += failed
        self.prompt_tokens += prompt_tokens
        self.output_tokens += output_tokens
        self._last = self._clock()
        if first_started is not None:
            since = self._engines_busy_since
            self._engines_busy_since = first_started if since is None else min(since, first_started)

    @property
    def done(self) -> int:
        return self.resumed + self.answered

    def _busy_s(self) -> float:
        since = self._engines_busy_since if self._engines_busy_since is not None else self._started
        return max(self._last - since, 0.0)

    def throughput(self) -> float:
        """Output tokens per second."""
        seconds = self._busy_s()
        return self.output_tokens / seconds if seconds > 0 else 0.0

    def eta_s(self) -> float | None:
        seconds = self._busy_s()
        if seconds <= 0 or self.answered <= 0:
            return None
        return (self.total - self.done) * seconds / self.answered

    def summary(self, interrupted: bool = False) -> BatchSummary:
        return BatchSummary(self.total, self.resumed, self.answered, self.failed, self.prompt_tokens,
                            self.output_tokens, self._clock() - self._started, self.throughput(), interrupted)


class LogProgress:
    """Progress as log lines, for --quiet and for output that is not a terminal."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logged = clock()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def update(self, tally: Tally) -> None:
        if self._clock() - self._logged < LOG_EVERY_S and tally.done < tally.total:
            return
        self._logged = self._clock()
        eta = tally.eta_s()
        logger.info("batch: %d/%d requests (%d failed), %.1f output tokens/s, ETA %s", tally.done, tally.total,
                    tally.failed, tally.throughput(), _duration(eta))

    def finish(self, summary: BatchSummary) -> None:
        for line in summary.lines():
            logger.info("%s", line)


class RichProgress:
    """A live progress bar: requests done/total, output tokens/s and ETA."""

    def __init__(self, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=self._console)
        self._task = self._progress.add_task("batch", total=total, completed=done,
                                             detail="starting engines ...")

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def update(self, tally: Tally) -> None:
        detail = f"{tally.failed} failed · {tally.throughput():.0f} tok/s · ETA {_duration(tally.eta_s())}"
        self._progress.update(self._task, completed=tally.done, detail=detail)

    def finish(self, summary: BatchSummary) -> None:
        from rich.console import Console

        out = Console()  # the summary goes to stdout, the bar to stderr
        for line in summary.lines():
            out.print(line, highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
