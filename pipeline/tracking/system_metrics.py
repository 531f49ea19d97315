"""MLflow's own system metrics (``system/cpu_utilization_percentage``, memory, disk, network and, where
``pynvml`` finds an NVIDIA GPU, ``system/gpu_*``) for the long stages, logged through the stage's :class:`Run`.

It is MLflow's ``SystemMetricsMonitor`` (what ``mlflow.start_run(log_system_metrics=True)`` starts) with two
changes: its points go through :meth:`Run.log_metrics`, so they are journaled to the spool and reach the
server with the run's other metrics (also after an outage), and it stops when the stage ends its run rather
than by asking the server for the run's status at every sample (which an outage would end for good).

The interval is :data:`SAMPLING_INTERVAL_S`; MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds)
overrides it, ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off, ``=true`` turns it on for every
stage. One sample reads a few psutil counters (and NVML): 0.12 ms on the CPU of docs/results.md ("System
metrics: cost"), so one every 30 s costs no measurable training throughput (``benchmarks.system_metrics_cost``).
"""
from __future__ import annotations

import logging
import os
from typing import Any

LONG_STAGES = ("train", "ablate")
SAMPLING_INTERVAL_S = 30.0
_ENV_SWITCH = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
_log = logging.getLogger(__name__)


def wanted(stage: str) -> bool:
    """System metrics for the long stages, unless the environment says otherwise."""
    switch = os.environ.get(_ENV_SWITCH, "").strip().lower()
    if switch in ("false", "0", "no", "off"):
        return False
    return stage in LONG_STAGES or switch in ("true", "1", "yes", "on")


class _RunLogger:
    """What the monitor needs of MLflow's ``BatchMetricsLogger``, writing into the stage's run."""

    def __init__(self, run: Any):
        self._run = run
        self.data: list[Any] = []
        self.total_training_time = self.total_log_batch_time = 0.0

    def record_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._run.log_metrics(metrics, step=step)

    def flush(self) -> None:  # the run flushes its buffer itself (at 500 points and when it ends)
        pass


def start(run: Any, interval: float = SAMPLING_INTERVAL_S) -> Any | None:
    """A started monitor writing into ``run`` (``finish()`` stops it), or None where MLflow's monitor is
    unavailable."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:  # an MLflow without it, or psutil missing
        _log.warning("system metrics not logged: %s", err)
        return None

    class Monitor(SystemMetricsMonitor):
        def monitor(self) -> None:
            while not self._shutdown_event.is_set():
                for _ in range(self.samples_before_logging):
                    self.collect_metrics()
                    if self._shutdown_event.wait(self.sampling_interval):
                        return  # the run ended: a partial sample is dropped, as MLflow does
                try:
                    self.publish_metrics(self.aggregate_metrics())
                except Exception as err:  # never let monitoring stop the stage
                    _log.warning("system metrics stopped: %s", err)
                    return

    monitor = Monitor(run.run_id or "spooled", sampling_interval=interval, tracking_uri=run.uri or None)
    monitor.mlflow_logger = _RunLogger(run)
    monitor.start()
    return monitor
