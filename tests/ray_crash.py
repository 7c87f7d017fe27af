"""A worker that dies mid-shard, for the distributed tests: an ``after_sample`` hook of
``run_distributed``, shipped to the Ray workers by value (the workers cannot import tests)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CrashAfter:
    """Exit the worker hard after ``samples`` samples, once per ``marker`` file."""

    samples: int
    marker: str

    def __call__(self, worker: str, sent: int) -> None:
        if sent == self.samples and not Path(self.marker).exists():
            Path(self.marker).write_text(worker)
            time.sleep(0.5)  # let the queue deliver what was sent
            os._exit(1)


def ship_by_value() -> None:
    """Make Ray pickle this module's classes by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
