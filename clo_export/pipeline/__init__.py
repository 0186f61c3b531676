"""The inference pipeline: decode → preprocess+infer → postprocess (+check) → annotate+encode.

- :mod:`~clo_export.pipeline.core`: :class:`Pipeline` (what each stage does to a batch, the batch
  size, the sequential loop), :class:`RunResult`; :mod:`~clo_export.pipeline.options`: :class:`InferOptions`;
- :mod:`~clo_export.pipeline.schedule`: the threads, queues and reorder semaphore, and the stop flags;
- :mod:`~clo_export.pipeline.check`: the live check against PyTorch (:class:`Checker`);
- :mod:`~clo_export.pipeline.sinkset`: the sinks' lifecycle; :mod:`~clo_export.pipeline.timing`: per-stage latency.

Library code: no printing; the CLI renders :class:`RunResult`.

Stopping: ``request_stop()`` (Ctrl-C in the CLI) stops reading; frames already read are finished
and every sink is closed, so the output video is complete and playable. A second request also
drops the frames still queued. An error in any stage aborts all stages, discards the sinks'
temporary files and is re-raised.
"""

from clo_export.pipeline.check import CheckedFrame, Checker
from clo_export.pipeline.core import Pipeline, RunResult
from clo_export.pipeline.options import InferOptions
from clo_export.pipeline.timing import StageStats, StageTimer

__all__ = ["CheckedFrame", "Checker", "InferOptions", "Pipeline", "RunResult", "StageStats", "StageTimer"]
