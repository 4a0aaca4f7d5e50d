"""One batch job: plan it from the input and the output so far, run the pipeline, append answers as they come."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import numpy as np

from cluster import ray_session
from cluster.batch.output import OutputWriter
from cluster.batch.pipeline import build_dataset
from cluster.batch.plan import BatchPlan, plan_batch
from cluster.batch.progress import BatchSummary, LogProgress, RichProgress, Tally
from cluster.batch.resume import answered_ids
from serve_app.config import ClusterConfig, ModelConfig, load_config
from serve_app.model_source import resolve_source
from serve_app.engine_protocol import Engine
from serve_app.vllm_adapter import VLLMEngine

logger = logging.getLogger(__name__)


class BatchError(ValueError):
    """A batch job that cannot start; the message says what to fix."""


def run_batch(config: ClusterConfig | str | Path, model: str, input: str | Path, output: str | Path,
              address: str | None = None, quiet: bool = False, max_in_flight: int | None = None,
              engine_cls: type[Engine] = VLLMEngine) -> BatchSummary:
    """Answer every request of the JSONL file `input` with `model` of `config`, appending OpenAI batch output
    lines to `output`. Requests already answered there are skipped, so rerunning after a crash or Ctrl-C
    finishes the job. Runs on a Ray cluster started for the job, or the one at `address`."""
    cluster = config if isinstance(config, ClusterConfig) else load_config(config)
    model_config = model_of(cluster, model)
    input_path, output_path = Path(input), Path(output)
    if not input_path.is_file():
        raise BatchError(f"input file {input_path} does not exist")
    if max_in_flight is not None and max_in_flight < 1:
        raise BatchError("max_in_flight must be at least 1")
    plan = plan_batch(input_path, answered_ids(output_path))
    tally = Tally(plan.total, plan.answered)
    view = LogProgress() if quiet else RichProgress(plan.total, plan.answered)
    if plan.remaining:
        logger.info("batch: %d requests in %s, %d answered already, %d to go", plan.total, input_path,
                    plan.answered, plan.remaining)
        interrupted = _run(plan, model_config, input_path, output_path, address, max_in_flight, engine_cls,
                           tally, view)
    else:
        interrupted = False
    summary = tally.summary(interrupted)
    view.finish(summary)
    return summary


def model_of(cluster: ClusterConfig, name: str) -> ModelConfig:
    """The model of `cluster` served as `name` (its name or an alias); BatchError naming the choices if none."""
    try:
        return cluster.model(name)
    except KeyError:
        names = ", ".join(n for m in cluster.models for n in m.served_names)
        raise BatchError(f"the config serves no model {name!r}; its models: {names}") from None


def _run(plan: BatchPlan, model: ModelConfig, input_path: Path, output_path: Path, address: str | None,
         max_in_flight: int | None, engine_cls: type[Engine], tally: Tally,
         view: LogProgress | RichProgress) -> bool:
    """Runs the pipeline, appending its answers; True when a signal stopped it."""
    import ray
    from ray.data import DataContext

    if address:
        ray_session.join_ray(address)
    else:
        resolve_source(model.source)  # convert a builtin model up front: a failure shows here, not in an actor
        ray_session.start_local_ray()
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = False  # the job shows its own
        context.print_on_execution_start = False
        dataset = build_dataset(plan, model, input_path, max_in_flight, engine_cls)
        with _StopOnSignals() as stop, OutputWriter(output_path) as writer, view:
            blocks = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
            try:
                for block in blocks:
                    with stop.deferred():
                        writer.write(block["output"].tolist())
                    tally.add(*_block_counts(block))
                    view.update(tally)
            except _Interrupted:
                logger.info("batch: stopping on a signal; the answers so far are saved")
            finally:
                blocks.close()  # shuts the pipeline down: engine actors stop now, not at garbage collection
            return stop.signalled
    finally:
        ray.shutdown()


def _block_counts(block: dict[str, np.ndarray]) -> tuple[int, int, int, int, float | None]:
    started = block["started_at"]
    first_started = float(np.nanmin(started)) if not np.isnan(started).all() else None
    return (len(block["output"]), int(block["failed"].sum()), int(block["prompt_tokens"].sum()),
            int(block["completion_tokens"].sum()), first_started)


class _Interrupted(Exception):
    pass


class _StopOnSignals:
    """SIGINT and SIGTERM stop the run between two writes to the output, never in the middle of one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signalled = False
        self._writing = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.signalled
        self.signalled = True
        if first and not self._writing:
            raise _Interrupted

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal arriving inside takes effect once the block is written."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self.signalled:
            raise _Interrupted
