"""Batch offline inference on Ray Data, in the OpenAI batch format, resumable."""

from cluster.batch.job import BatchError, run_batch
from cluster.batch.progress import BatchSummary
from cluster.batch.resume import OutputFileError

__all__ = ["BatchError", "BatchSummary", "OutputFileError", "run_batch"]
