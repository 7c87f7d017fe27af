"""MLflow tracking (``--track mlflow``; ``pip install 'specbench[track]'``).

Works offline: the tracking URI is ``$MLFLOW_TRACKING_URI`` (e.g. ``sqlite:///mlflow.db`` with
the full ``mlflow`` package), else a local ``./mlruns`` file store. MLflow 3 keeps file stores
in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which specbench sets for file URIs:
``mlflow-skinny`` (the ``track`` extra) has no database backend. The experiment is
``$MLFLOW_EXPERIMENT_NAME``, else ``specbench``. The client API is used directly, so no global
"active run" state leaks into the caller.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from specbench.tracking import Tracker

_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_BATCH = 100
_PARAM_LIMIT = 6000


def safe_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces (sweep labels have ``=``)."""
    return _KEY.sub("_", key)


class MlflowTracker(Tracker):
    name = "mlflow"
    extra = "track"

    def __init__(self) -> None:
        import mlflow
        from mlflow.entities import Metric, Param

        self._mlflow = mlflow
        self._metric, self._param = Metric, Param
        self._client: Any = None
        self._run_id = ""

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = self._mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "specbench")
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(name)
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        self._client, self._run_id = client, run.info.run_id
        entries = [
            self._param(safe_key(k)[:250], v[:_PARAM_LIMIT]) for k, v in sorted(params.items())
        ]
        for start in range(0, len(entries), _BATCH):
            client.log_batch(self._run_id, params=entries[start : start + _BATCH])

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric(safe_key(k), v, now, step) for k, v in metrics.items()]
        for start in range(0, len(entries), _BATCH):
            self._client.log_batch(self._run_id, metrics=entries[start : start + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._metrics(metrics, step)

    def log_summary(self, metrics: dict[str, float]) -> None:
        self._metrics({f"summary/{k}": v for k, v in metrics.items()}, 0)

    def log_artifact(self, path: Path) -> None:
        self._client.log_artifact(self._run_id, str(path))

    def finish(self, status: str) -> None:
        states = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
        self._client.set_terminated(self._run_id, states.get(status, "FINISHED"))
