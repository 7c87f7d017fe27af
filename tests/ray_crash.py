"""A worker that dies mid-shard, for the distributed tests: an ``after_sample`` hook of
``run_distributed``, shipped to the Ray workers by value (the workers cannot import tests)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CrashAfter:
    """Exit the worker hard after ``samples`` samples, once per ``marker`` file."""

    samples: int
    marker: str

    def __call__(self, worker: str, sent: int) -> None:
        if sent != self.samples:
            return
        # Claim the crash atomically: two shards reach their 3rd sample at once often enough,
        # and a check-then-write marker let both die (one retry more than the test expects).
        try:
            claim = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another worker already died for this run
        with os.fdopen(claim, "w") as handle:
            handle.write(worker)
        time.sleep(0.5)  # let the queue deliver what was sent
        os._exit(1)


def ship_by_value() -> None:
    """Make Ray pickle this module's classes by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
