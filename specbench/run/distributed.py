"""Distributed runs on Ray (``specbench run --ray ADDRESS``).

The prompts still to do are split into shards (``cluster.workers``); each shard runs as one
Ray task with the resources of ``[cluster]`` (CPUs, GPUs, memory), loads the models once and
runs *every* method on its prompts, so each speedup compares methods on the same hardware.
Records stream back through a Ray queue to the driver, which writes the one JSONL file as a
local run does (a header and a ``run_end`` per worker, each sample flushed as it arrives).

A shard whose worker dies loses only its unfinished samples: the driver runs it again (at
most ``cluster.max_retries`` times) for the samples it has not received. ``--resume`` works on
a distributed file exactly as on a local one, and Ctrl-C cancels the workers. Summaries take
each worker's speedup over its own baseline and combine them (:mod:`specbench.report.uncertainty`).
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specbench.costs.units import header_unit_costs
from specbench.errors import SpecbenchError
from specbench.install_hints import install_extra
from specbench.presets.schema import ResolvedPreset
from specbench.prompts.prompt import Prompt
from specbench.records import (
    RecordWriter,
    RunEnd,
    RunHeader,
    SampleRecord,
)
from specbench.report.summary import summarize
from specbench.report.uncertainty import machine_load
from specbench.run.progress import Progress, ProgressCallback, ProgressTracker
from specbench.run.runner import (
    ResultsFile,
    RunAborted,
    RunOutcome,
    Session,
    run_end_record,
    run_header,
)

#: Called on the worker after each sample it sent: ``(worker, samples sent so far)``. Tests
#: pass one that kills the worker mid-shard; it must pickle (Ray ships it to the workers).
AfterSample = Callable[[str, int], None]

Key = tuple[str, str, int]


def require_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise SpecbenchError(
            "--ray needs Ray, which is not installed", install_extra("ray")
        ) from error
    return ray


def plan_shards(prompts: list[Prompt], workers: int) -> list[list[str]]:
    """Prompt ids dealt round-robin into at most ``workers`` non-empty shards (long and short
    prompts spread evenly when sets are ordered by category)."""
    shards: list[list[str]] = [[] for _ in range(max(1, min(workers, len(prompts))))]
    for index, prompt in enumerate(prompts):
        shards[index % len(shards)].append(prompt.id)
    return shards


def run_shard(
    resolved: ResolvedPreset,
    prompt_ids: list[str],
    done: set[Key],
    previous: list[SampleRecord],
    run_id: str,
    channel: Any,
    shard: int,
    after_sample: AfterSample | None = None,
) -> int:
    """One shard on a Ray worker: every method on ``prompt_ids``; records go to ``channel``."""
    worker = f"shard{shard}@{socket.gethostname()}:{os.getpid()}"
    wanted = set(prompt_ids)
    every = resolved.preset.prompts.load(resolved.base_dir)
    indices = [i for i, p in enumerate(every) if p.id in wanted]
    prompts = [every[i] for i in indices]

    def message(text: str) -> None:
        channel.put(("message", shard, text))

    session = Session.start(resolved, prompts, done, run_id, previous, message, indices=indices)
    header = run_header(resolved, session.models, 0, run_id, session.unit_costs).model_copy(
        update={"worker": worker}
    )
    channel.put(("header", shard, header.model_dump_json()))
    sent = 0

    def on_record(record: SampleRecord) -> None:
        nonlocal sent
        channel.put(
            ("sample", shard, record.model_copy(update={"worker": worker}).model_dump_json())
        )
        sent += 1
        if after_sample is not None:
            after_sample(worker, sent)

    try:
        session.decode(lambda label, w: message(f"warming up {label} ({w})"), on_record)
    finally:
        session.close()
    channel.put(("end", shard, run_end_record(run_id, 0, "finished").model_dump_json()))
    return sent


@dataclass
class _Shard:
    index: int
    prompt_ids: list[str]
    attempts: int = 0
    ref: Any = None


@dataclass
class _Driver:
    """Writes what workers send, in arrival order; numbers each worker's session."""

    writer: RecordWriter
    tracker: ProgressTracker
    report: ProgressCallback
    done: set[Key]
    next_session: int
    written: int = 0
    headers: list[RunHeader] = field(default_factory=list)
    ends: list[RunEnd] = field(default_factory=list)
    #: Sessions whose header is written and whose end is not, by shard.
    open: dict[int, int] = field(default_factory=dict)

    def close(self, shard: int, status: str) -> None:
        """End the open session of ``shard`` (a worker that died, a run stopped midway):
        every header gets exactly one end, and no end names a session no header opened."""
        session = self.open.pop(shard, None)
        if session is None:
            return
        end = run_end_record(self.headers[0].run_id, session, status)
        self.ends.append(end)
        self.writer.write(end)

    def handle(self, kind: str, shard: int, payload: str) -> None:
        if kind == "message":
            self.report(self.tracker.snapshot("running", f"shard {shard}: {payload}"))
        elif kind == "header":
            header = RunHeader.model_validate_json(payload).model_copy(
                update={"session": self.next_session}
            )
            self.close(shard, "failed")  # a retry opens a new one: the old worker is gone
            self.open[shard] = self.next_session
            self.next_session += 1
            self.headers.append(header)
            self.writer.write(header)
        elif kind == "sample":
            record = SampleRecord.model_validate_json(payload)
            key = (record.method, record.prompt_id, record.run)
            if key in self.done:
                return
            self.done.add(key)
            self.writer.write(record)
            self.written += 1
            self.report(self.tracker.add(record))
        elif kind == "end":
            if shard not in self.open:
                return
            end = RunEnd.model_validate_json(payload).model_copy(
                update={"session": self.open.pop(shard)}
            )
            self.ends.append(end)
            self.writer.write(end)


def _drain(channel: Any, driver: _Driver) -> None:
    while True:
        try:
            kind, shard, payload = channel.get_nowait()
        except queue_module.Empty:  # ray.util.queue.Empty subclasses it
            return
        driver.handle(kind, shard, payload)


def _specbench_env() -> dict[str, str]:
    """SPECBENCH_* variables (cache location, test hooks) travel to the workers."""
    return {k: v for k, v in os.environ.items() if k.startswith("SPECBENCH_")}


def connect(address: str, workers: int, cpus_per_worker: float) -> bool:
    """Connect to (``auto``, an address) or start (``local``) a Ray cluster; True if started
    here (and so to be shut down here)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "ERROR",
        "log_to_driver": False,
        "runtime_env": {"env_vars": _specbench_env()},
    }
    if address == "local":
        # The driver's machine only, on the loopback address.
        options["num_cpus"] = max(int(os.cpu_count() or 1), int(workers * max(cpus_per_worker, 1)))
        ray.init(**options)
    else:
        ray.init(address=address, **options)
    return True


def run_distributed(
    resolved: ResolvedPreset,
    address: str,
    output: Path | None = None,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    poll_s: float = 0.1,
    after_sample: AfterSample | None = None,
) -> RunOutcome:
    """Run ``resolved`` on a Ray cluster and write one results file (see the module doc);
    ``after_sample`` runs on the workers after each sample (see :data:`AfterSample`)."""
    ray = require_ray()
    from ray.util.queue import Queue

    report = on_progress or (lambda progress: None)
    preset = resolved.preset
    cluster = preset.cluster
    state = ResultsFile.open(resolved, output, resume)
    path, run_id, headers, done = state.path, state.run_id, state.headers, state.done
    if state.complete:
        report(Progress("done", "nothing left to run", path))
        return RunOutcome(path, state.finished, written=0, skipped=len(state.wanted))

    left = {prompt_id for _, prompt_id, _ in state.wanted - done}
    remaining = [p for p in state.prompts if p.id in left]
    shards = [_Shard(i, ids) for i, ids in enumerate(plan_shards(remaining, cluster.workers))]
    report(Progress("loading", f"connecting to Ray ({address})", path))
    started_here = connect(address, len(shards), cluster.num_cpus)
    channel = Queue()
    resources: dict[str, Any] = {"num_cpus": cluster.num_cpus, "num_gpus": cluster.num_gpus}
    if cluster.memory_gb is not None:
        resources["memory"] = int(cluster.memory_gb * 1024**3)
    # SPECBENCH_* variables of this driver reach the workers of any cluster, started or not.
    runtime_env = {"env_vars": _specbench_env()}
    task = ray.remote(max_retries=0)(run_shard).options(runtime_env=runtime_env, **resources)
    baseline = preset.runs.baseline
    ordered = sorted((m.label for m in resolved.methods), key=lambda label: label != baseline)
    tracker = ProgressTracker(ordered, state.wanted, state.previous_samples, baseline, run_id, path)

    def submit(shard: _Shard) -> None:
        # A retry skips what the driver already has, and sees the baseline outputs it needs.
        ids = set(shard.prompt_ids)
        shard_done = {k for k in done if k[1] in ids}
        shard_previous = [s for s in tracker.samples if s.prompt_id in ids]
        shard.attempts += 1
        shard.ref = task.remote(
            resolved,
            shard.prompt_ids,
            shard_done,
            shard_previous,
            run_id,
            channel,
            shard.index,
            after_sample,
        )

    with RecordWriter(path) as writer:
        driver = _Driver(writer, tracker, report, done, next_session=len(headers) + 1)
        try:
            for shard in shards:
                submit(shard)
            report(tracker.snapshot("running", f"{len(shards)} shards on Ray"))
            pending = {shard.index: shard for shard in shards}
            while pending:
                _drain(channel, driver)
                refs = [shard.ref for shard in pending.values()]
                ready, _ = ray.wait(refs, num_returns=1, timeout=poll_s)
                for ref in ready:
                    shard = next(s for s in pending.values() if s.ref == ref)
                    try:
                        ray.get(ref)
                        _drain(channel, driver)
                        del pending[shard.index]
                    except Exception as error:  # the worker died or the task raised
                        time.sleep(0.5)
                        _drain(channel, driver)  # keep what it sent before dying
                        if shard.attempts > cluster.max_retries:
                            raise SpecbenchError(
                                f"shard {shard.index} failed {shard.attempts} times "
                                f"({type(error).__name__}: {str(error).splitlines()[0]})",
                                "see the worker logs; raise cluster.max_retries to keep trying",
                            ) from error
                        report(
                            tracker.snapshot(
                                "running", f"shard {shard.index} failed; retrying it elsewhere"
                            )
                        )
                        driver.close(shard.index, "failed")
                        submit(shard)
            end = run_end_record(run_id, driver.next_session - 1, "finished")
            load = machine_load(headers + driver.headers, state.ends + driver.ends + [end])
            unit_costs = header_unit_costs(headers + driver.headers)
            summaries = summarize(tracker.samples, baseline, run_id, load, unit_costs=unit_costs)
            for summary in summaries:
                writer.write(summary)
        except (Exception, KeyboardInterrupt) as error:
            for shard in shards:
                if shard.ref is not None:
                    with contextlib.suppress(Exception):  # already finished or gone
                        ray.cancel(shard.ref, force=True)
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            for shard in shards:
                driver.close(shard.index, status)
            if started_here:
                ray.shutdown()
            raise RunAborted(error, path, driver.written, "the distributed run") from error
    if started_here:
        ray.shutdown()
    report(tracker.snapshot("done", "finished"))
    skipped = len(state.wanted) - driver.written
    return RunOutcome(path, summaries, written=driver.written, skipped=skipped)
