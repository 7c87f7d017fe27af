"""Weights & Biases tracking (``--track wandb``; ``pip install 'specbench[track]'``).

Offline unless told otherwise: the mode is ``$WANDB_MODE``, else ``offline`` (runs are written
under ``$WANDB_DIR``, else the working directory, and can be uploaded later with
``wandb sync``); the project is ``$WANDB_PROJECT``, else ``specbench``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from specbench.tracking import Tracker


class WandbTracker(Tracker):
    name = "wandb"
    extra = "track"

    def __init__(self) -> None:
        import wandb

        self._wandb = wandb
        self._run: Any = None
        self._name = ""

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        wandb = self._wandb
        self._name = run_name
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "specbench"),
            name=run_name,
            config=params,
            tags=[f"{k}:{v}"[:64] for k, v in tags.items()],
            mode=os.environ.get("WANDB_MODE", "offline"),
            dir=os.environ.get("WANDB_DIR") or None,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._run.log({**metrics, "sample": step})

    def log_summary(self, metrics: dict[str, float]) -> None:
        self._run.summary.update(metrics)

    def log_artifact(self, path: Path) -> None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self._name}-{path.stem}")[:120]
        artifact = self._wandb.Artifact(name, type="specbench-results")
        artifact.add_file(str(path))
        self._run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self._run.finish(exit_code=0 if status == "finished" else 1)
        # run.finish() only asks wandb-core to close the run (a message it does not wait
        # for), and the core writes the offline log's last block when it closes it: read at
        # once, the log can still be its 7-byte header. teardown() waits for the core to
        # close every run and exit; the next start() launches a new one.
        self._wandb.teardown()
