"""Run a validated preset: load models once, warm up, time every method on every prompt.

Prompts run in the outer loop and methods in the inner one (the baseline first), so slow
drift of the machine (thermals, other load) affects every method alike. Each sample is
written and flushed as it finishes; summaries are written once all samples are in.
``resume`` continues a results file and skips every (method, prompt, run) it already holds.

A multi-turn prompt (MT-Bench) is one sample: each turn is generated in turn, the next one
seeing the model's earlier answers, and the sample adds up time, tokens and statistics.
"""

from __future__ import annotations

import hashlib
import itertools
import shlex
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from specbench.costs.phases import ledger_costs
from specbench.costs.units import CostProbe, UnitCosts
from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import (
    DecodeStats,
    GenerationRequest,
    GenerationResult,
    InterruptedGeneration,
)
from specbench.errors import SpecbenchError
from specbench.methods.in_process import InProcessMethod
from specbench.models.ledger import CostLedger, open_ledger
from specbench.plugins import (
    DecodingMethod,
    MethodModels,
    engine_info,
)
from specbench.presets.schema import Preset, ResolvedPreset, flatten_preset, preset_differences
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.prompt import Prompt
from specbench.prompts.tasks import task_for
from specbench.records import (
    AnyRecord,
    PhaseCosts,
    RecordWriter,
    RunEnd,
    RunHeader,
    SampleRecord,
    ServingSample,
    SummaryRecord,
    read_records,
)
from specbench.report.summary import generation_metrics, summarize
from specbench.report.uncertainty import current_load, machine_load
from specbench.run.environment import collect_environment
from specbench.run.output_paths import check_output_file
from specbench.run.plan import SessionPlan
from specbench.run.progress import Progress, ProgressCallback, ProgressTracker
from specbench.run.serving import serving_sample


@dataclass
class RunOutcome:
    """What a finished run wrote."""

    output: Path
    summaries: list[SummaryRecord]
    written: int
    skipped: int
    #: Samples of this session that failed (recorded with their error; --resume reruns them).
    failed: list[SampleRecord] = field(default_factory=list)


class InterruptedUnit(KeyboardInterrupt):
    """Ctrl-C inside a unit, with the records of what it finished (the rest failed)."""

    def __init__(self, records: list[SampleRecord]) -> None:
        super().__init__()
        self.records = records


class RunAborted(Exception):
    """A run stopped early (Ctrl-C or an error); every sample written so far is kept."""

    def __init__(self, cause: BaseException, output: Path, written: int, where: str) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.output = output
        self.written = written
        self.where = where


@dataclass(frozen=True)
class _Task:
    prompt_index: int
    prompt: Prompt
    run: int
    label: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.label, self.prompt.id, self.run)


def _units(
    prompts: Sequence[Prompt],
    runs: int,
    labels: Sequence[str],
    methods: dict[str, DecodingMethod],
    indices: Sequence[int] | None = None,
    apart: Collection[str] = (),
) -> list[tuple[_Task, ...]]:
    """What one call decodes: a prompt, or a batch of prompts for a batched method.

    Ordered prompt-major (run, first prompt, then method), so every method sees the machine
    in the same state; a batched method's unit sits at its first prompt. Methods in
    ``apart`` come after the others, one at a time (method-major). ``indices`` are the
    prompts' positions in the whole set (a shard holds some of them): seeds come from them.
    """
    positions = list(indices) if indices is not None else list(range(len(prompts)))
    units = []
    for run in range(runs):
        for order, label in enumerate(labels):
            size = max(1, methods[label].batch_size)
            for start in range(0, len(prompts), size):
                chunk = tuple(
                    _Task(positions[i], prompts[i], run, label)
                    for i in range(start, min(start + size, len(prompts)))
                )
                units.append(((run, start, order), chunk))

    def key(item: tuple[tuple[int, int, int], tuple[_Task, ...]]) -> tuple[int, int, int, int]:
        run, start, order = item[0]
        if item[1][0].label in apart:
            return (1, order, run, start)
        return (0, run, start, order)

    return [chunk for _, chunk in sorted(units, key=key)]


def sample_seed(base_seed: int, prompt_index: int, run: int) -> int:
    """The seed of one (prompt, run): the same for every method, independent of order."""
    return base_seed * 1_000_003 + prompt_index * 1_009 + run


def output_sha(tokens: Sequence[int]) -> str:
    """A short fingerprint of generated tokens, to compare outputs without storing them."""
    return hashlib.sha1(",".join(map(str, tokens)).encode()).hexdigest()[:16]


def resolve_output(resolved: ResolvedPreset, output: Path | None, resume: bool) -> Path:
    """The results file: an explicit path, or the preset's pattern (newest match to resume)."""
    if output is not None:
        return output
    pattern = resolved.preset.output.path.replace("{preset}", resolved.name)
    if resume:
        matches = sorted(Path().glob(pattern.replace("{timestamp}", "*")))
        if not matches:
            raise SpecbenchError(
                f"no earlier results of preset '{resolved.name}' to resume (looked for {pattern})",
                "pass the file with --output, or drop --resume",
            )
        return matches[-1]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(pattern.replace("{timestamp}", stamp))


def run_preset(
    resolved: ResolvedPreset,
    output: Path | None = None,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    train_missing: bool = False,
) -> RunOutcome:
    """Run every method of ``resolved`` and write records to the results file.

    ``train_missing`` lets methods train what they need on the spot (``--train``).
    """
    state = ResultsFile.open(resolved, output, resume)
    path, run_id, headers = state.path, state.run_id, state.headers
    report = on_progress or (lambda progress: None)
    preset = resolved.preset
    if state.complete:  # a finished file: say so without loading any model
        report(Progress("done", "nothing left to run", path))
        return RunOutcome(path, state.finished, written=0, skipped=len(state.wanted))

    session = Session.start(
        resolved,
        state.prompts,
        state.done,
        run_id,
        state.previous_samples,
        lambda message: report(Progress("loading", message, path)),
        train_missing,
        output=path,
    )
    baseline = preset.runs.baseline
    skipped = len(session.tasks) - len(session.todo)
    keys = [t.key for t in session.tasks]
    tracker = ProgressTracker(session.labels, keys, state.previous_samples, baseline, run_id, path)
    tracker.processed = lambda: _tokens_processed(session.models)
    written = 0
    failed: list[SampleRecord] = []
    number = len(headers) + 1
    with RecordWriter(path) as writer:
        header = run_header(resolved, session.models, number, run_id, session.unit_costs)
        writer.write(header)
        try:

            def on_record(record: SampleRecord) -> None:
                nonlocal written
                writer.write(record)
                written += 1
                if record.failed:
                    failed.append(record)
                report(tracker.add(record))

            session.decode(
                lambda label, w: report(tracker.snapshot("warmup", f"warming up {label} ({w})")),
                on_record,
            )
            end = run_end_record(run_id, number, "finished")
            writer.write(end)
            load = machine_load(headers + [header], state.ends + [end])
            summaries = summarize(
                tracker.samples, baseline, run_id, load, unit_costs=session.unit_costs
            )
            for summary in summaries:
                writer.write(summary)
        except (Exception, KeyboardInterrupt) as error:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            writer.write(run_end_record(run_id, number, status))
            raise RunAborted(error, path, written, session.where) from error
        finally:
            session.close()
    report(tracker.snapshot("done", "finished"))
    return RunOutcome(path, summaries, written=written, skipped=skipped, failed=failed)


@dataclass
class ResultsFile:
    """A results file about to be (re)written: what it already holds and what is wanted.

    The one place a local run and a distributed driver learn what is left to do."""

    path: Path
    run_id: str
    headers: list[RunHeader]
    ends: list[RunEnd]
    previous_samples: list[SampleRecord]
    finished: list[SummaryRecord]
    prompts: list[Prompt]
    wanted: set[tuple[str, str, int]]
    done: set[tuple[str, str, int]]

    @property
    def complete(self) -> bool:
        """Summaries written and every (method, prompt, run) in the file."""
        return bool(self.finished) and self.wanted <= self.done

    @classmethod
    def open(cls, resolved: ResolvedPreset, output: Path | None, resume: bool) -> ResultsFile:
        path = resolve_output(resolved, output, resume)
        # Before anything loads: an unwritable path fails here, not after the first sample.
        source = "--output" if output is not None else f"output.path of {resolved.source}"
        check_output_file(path, source)
        previous = _previous_records(path, resolved, resume)
        headers = [r for r in previous if isinstance(r, RunHeader)]
        samples = [r for r in previous if isinstance(r, SampleRecord)]
        preset = resolved.preset
        prompts = preset.prompts.load(resolved.base_dir)
        _check_prompts_unchanged(path, samples, prompts)
        return cls(
            path=path,
            run_id=headers[0].run_id if headers else uuid.uuid4().hex[:12],
            headers=headers,
            ends=[r for r in previous if isinstance(r, RunEnd)],
            previous_samples=samples,
            finished=[r for r in previous if isinstance(r, SummaryRecord)],
            prompts=prompts,
            wanted={
                (m.label, p.id, run)
                for m in resolved.methods
                for p in prompts
                for run in range(preset.runs.count)
            },
            # A failed sample is not done: --resume runs it again.
            done={(s.method, s.prompt_id, s.run) for s in samples if not s.failed},
        )


@dataclass
class Session:
    """One session's work: its :class:`SessionPlan` (models, methods, their order and
    lifecycle) and the units it still has to decode (prompt-major order). The local runner
    and each distributed shard use it alike."""

    plan: SessionPlan
    tasks: list[_Task]
    todo_units: list[tuple[_Task, ...]]
    done: set[tuple[str, str, int]]
    context: _Context
    where: str = "starting"
    #: What one forward of each in-process model costs (None: no in-process target).
    unit_costs: UnitCosts | None = None

    @property
    def models(self) -> MethodModels:
        return self.plan.models

    @property
    def methods(self) -> dict[str, DecodingMethod]:
        return self.plan.methods

    @property
    def labels(self) -> list[str]:
        return self.plan.order

    @property
    def todo(self) -> list[_Task]:
        return [t for unit in self.todo_units for t in unit if t.key not in self.done]

    @classmethod
    def start(
        cls,
        resolved: ResolvedPreset,
        prompts: list[Prompt],
        done: set[tuple[str, str, int]],
        run_id: str,
        previous_samples: Sequence[SampleRecord],
        on_message: Callable[[str], None],
        train_missing: bool = False,
        indices: Sequence[int] | None = None,
        output: Path | None = None,
    ) -> Session:
        """Load the models, build and prepare the methods, and plan what is left to do;
        ``indices`` place a shard's prompts in the whole set (for seeds)."""
        preset = resolved.preset
        plan = SessionPlan.open(
            resolved, prompts, on_message, train_missing=train_missing, output=output
        )
        plan.prepare_together()
        units = _units(prompts, preset.runs.count, plan.order, plan.methods, indices, plan.apart)
        tasks = [task for unit in units for task in unit]
        _check_unique([task.key for task in tasks])
        todo_units = [unit for unit in units if any(t.key not in done for t in unit)]
        context = _Context(preset, plan.models, run_id, previous_samples, plan.references)
        session = cls(plan, tasks, todo_units, set(done), context)
        target = plan.models.loaded_target
        if target is not None and todo_units:
            on_message("measuring unit costs")
            first = todo_units[0][0].prompt
            ids = context.encoder.encode([], first.turns[0], first.system)
            # Halfway through a generation: the mean context a decoding step attends to.
            length = len(ids) + preset.sampling.max_new_tokens // 2
            grown = list(itertools.islice(itertools.cycle(ids), length))
            if grown:  # an empty prompt is reported when it is decoded
                # Every engine the methods decode on is probed (its cost shape differs).
                executions = [
                    method.execution()
                    for method in plan.methods.values()
                    if isinstance(method, InProcessMethod)
                ]
                # Kept open: each unit is probed again right after it (its level).
                probe = CostProbe(target, plan.models.draft, grown, executions)
                try:
                    session.unit_costs = probe.unit_costs()
                except BaseException:  # Ctrl-C while probing: its caches go back
                    probe.close()
                    raise
                context.probe = probe
        return session

    def close(self) -> None:
        """Release what the methods hold (engine processes); each method's ``close`` runs
        once, also when method-major decoding closed some already."""
        if self.context.probe is not None:
            self.context.probe.close()
        self.plan.close()

    def decode(
        self,
        on_warmup: Callable[[str, int], None],
        on_record: Callable[[SampleRecord], None],
    ) -> None:
        """Warm up each method with work left, then decode every unit left; every new record
        goes to ``on_record`` as it finishes.

        Methods decoded apart (every method with ``runs.order = "method"``, the external
        engines with ``"engines-last"``) come after the others, one at a time: prepared just
        before its warm-up and closed after its last prompt, so only one external engine
        holds memory at a time."""
        apart = self.plan.apart
        pending = [label for label in self.labels if label in {t.label for t in self.todo}]
        together = [label for label in pending if label not in apart]
        for label in together:
            self._warm_up(label, on_warmup)
        self._decode_units([u for u in self.todo_units if u[0].label in together], on_record)
        for label in (label for label in pending if label in apart):
            self.where = f"starting {label}"
            self.plan.prepare(label)
            self._warm_up(label, on_warmup)
            self._decode_units([u for u in self.todo_units if u[0].label == label], on_record)
            self.plan.finish(label)

    def _warm_up(self, label: str, on_warmup: Callable[[str, int], None]) -> None:
        for w in range(self.plan.resolved.preset.runs.warmup):
            self.where = f"warm-up of {label}"
            on_warmup(label, w + 1)
            self.context.warm_up(self.methods[label], self.plan.prompts[0], w)
        self.methods[label].end_warmup()

    def _decode_units(
        self, units: Sequence[tuple[_Task, ...]], on_record: Callable[[SampleRecord], None]
    ) -> None:
        preset = self.plan.resolved.preset
        for whole in units:
            # Resuming: only what is left (a server level resends only its failed requests).
            unit = tuple(t for t in whole if t.key not in self.done)
            if not unit:
                continue
            first = unit[0]
            self.where = f"{first.label} on prompt {first.prompt.id} (run {first.run})"
            if len(unit) > 1:
                self.where = (
                    f"{first.label} on a batch of {len(unit)} from prompt {first.prompt.id}"
                )
            try:
                records = self.context.time_unit(
                    unit, self.methods[first.label], preset.runs.baseline
                )
            except InterruptedUnit as stop:  # keep what finished, then stop
                self._keep(stop.records, on_record)
                raise KeyboardInterrupt from stop
            self._keep(records, on_record)

    def _keep(
        self, records: Sequence[SampleRecord], on_record: Callable[[SampleRecord], None]
    ) -> None:
        for record in records:
            key = (record.method, record.prompt_id, record.run)
            if key in self.done:
                continue
            self.done.add(key)
            on_record(record)


def _check_unique(keys: Sequence[tuple[str, str, int]]) -> None:
    """Decoding skips a (method, prompt id, run) already done: two tasks with one key would
    lose the second without a word, so prompts sharing an id are refused up front."""
    seen: set[tuple[str, str, int]] = set()
    for key in keys:
        if key in seen:
            raise SpecbenchError(
                f"two prompts have the id '{key[1]}': only one of them would run",
                "give every prompt its own id",
            )
        seen.add(key)


def _tokens_processed(models: MethodModels) -> int:
    return sum(model.counters.tokens_processed for model in models.loaded)


def run_end_record(run_id: str, session: int, status: str) -> RunEnd:
    """The record that closes a session: its status and the machine's load now."""
    return RunEnd(
        run_id=run_id,
        session=session,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status=status,
        load=current_load(),
    )


def run_header(
    resolved: ResolvedPreset,
    models: MethodModels,
    session: int,
    run_id: str | None = None,
    unit_costs: UnitCosts | None = None,
) -> RunHeader:
    """The header of a session writing results of ``resolved`` (a new run id if none)."""
    described = {"target": models.target.describe()} if models.loaded else {}
    if models.draft is not None:
        described["draft"] = models.draft.describe()
    if not described:  # engine-only runs: the engines load the models themselves
        specs = resolved.preset.models
        described["target"] = {"loaded": False, **specs.target.model_dump(mode="json")}
    return RunHeader(
        run_id=run_id or uuid.uuid4().hex[:12],
        session=session,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        preset_name=resolved.name,
        preset_source=resolved.source,
        preset_hash=resolved.hash,
        preset=resolved.effective(),
        seed=resolved.preset.sampling.seed,
        environment=collect_environment(),
        models=described,
        load=current_load(),
        command=list(resolved.arguments) or None,
        unit_costs=None if unit_costs is None else unit_costs.model_dump(),
    )


def _previous_records(path: Path, resolved: ResolvedPreset, resume: bool) -> list[AnyRecord]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    if not resume:
        raise SpecbenchError(
            f"{path} already holds results",
            "pass --resume to continue it, or choose another file with --output",
        )
    records = read_records(path)
    headers = [r for r in records if isinstance(r, RunHeader)]
    if headers and headers[0].preset_hash != resolved.hash:
        raise _resume_refused(path, headers[0], resolved)
    return records


def _resume_refused(path: Path, header: RunHeader, resolved: ResolvedPreset) -> SpecbenchError:
    """What differs from the file's preset, and the command that resumes it as written."""
    differences = preset_differences(header.preset, resolved.effective())
    shown = "; ".join(differences[:6]) + (
        f"; {len(differences) - 6} more" if len(differences) > 6 else ""
    )
    if header.command:
        words = header.command
    else:  # written before headers kept the command: set each differing value back
        flat = flatten_preset(header.preset)
        keys = [d.split(":", 1)[0] for d in differences]
        if any(key.startswith("methods.") or flat.get(key, "None") == "None" for key in keys):
            return SpecbenchError(
                f"{path} was written with other settings ({shown})",
                "resume with the preset and flags it was written with (its first line holds "
                "that preset), or start a new file with --output",
            )
        words = ["--preset", header.preset_source]
        for key in keys:
            words += ["--set", f"{key}={flat[key]}"]
    command = shlex.join(["specbench", "run", *words, "--output", str(path), "--resume"])
    return SpecbenchError(
        f"{path} was written with other settings ({shown})",
        f"resume it as written with `{command}`, or start a new file with --output",
    )


def _check_prompts_unchanged(
    path: Path, samples: Sequence[SampleRecord], prompts: Sequence[Prompt]
) -> None:
    """Resume pairs samples with prompts by id: a prompt whose text changed since its samples
    were written would be skipped as done although it never ran. Samples written before
    records had ``prompt_sha`` cannot be checked."""
    current = {p.id: p.sha for p in prompts}
    # A sample of a prompt no longer in the set is not "changed": it is simply not wanted.
    changed = sorted(
        {
            s.prompt_id
            for s in samples
            if s.prompt_sha and s.prompt_id in current and current[s.prompt_id] != s.prompt_sha
        }
    )
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise SpecbenchError(
            f"{path}: the prompts {shown} are not the ones its samples were run on (the prompt "
            "set changed since)",
            "restore the prompts the file was written with, or start a new file with --output",
        )


@dataclass
class _Context:
    """What every timed generation of a run shares."""

    preset: Preset
    models: MethodModels
    run_id: str
    previous: Sequence[SampleRecord]
    references: dict[str, str | None] = field(default_factory=dict)
    #: Output fingerprints of every reference method, by label, then (prompt id, run).
    outputs: dict[str, dict[tuple[str, int], str]] = field(default_factory=dict)
    engines: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: The run's cost probe, which times each unit's forward sizes again right after it.
    probe: CostProbe | None = None

    def __post_init__(self) -> None:
        sampling = self.preset.sampling
        self.sampling = SamplingParams(
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p
        )
        tokenizer = self.models.tokenizer
        self.stop_ids = frozenset(tokenizer.eos_token_ids)
        prompts = self.preset.prompts
        self.encoder = PromptEncoder(tokenizer, prompts.chat_template, prompts.system_prompt)
        wanted = set(self.references.values()) | {self.preset.runs.baseline}
        for s in self.previous:
            if s.method in wanted and not s.failed:
                self.outputs.setdefault(s.method, {})[(s.prompt_id, s.run)] = s.output_sha

    def request(
        self, prompt_ids: list[int], seed: int, messages: Sequence[tuple[str, str]] = ()
    ) -> GenerationRequest:
        if not prompt_ids:
            raise SpecbenchError("a prompt encodes to no tokens", "remove or fix that prompt")
        return GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=self.preset.sampling.max_new_tokens,
            sampling=self.sampling,
            seed=seed,
            stop_token_ids=self.stop_ids,
            messages=tuple(messages),
        )

    def warm_up(self, method: DecodingMethod, prompt: Prompt, index: int) -> None:
        ids = self.encoder.encode([], prompt.turns[0], prompt.system)
        messages = self.encoder.messages([], prompt.turns[0], prompt.system)
        seed = sample_seed(self.preset.sampling.seed, -1, index)
        result = method.generate(self.request(ids, seed, messages))
        if result.error is not None:  # a server that fails its warm-up fails every request
            raise SpecbenchError(
                f"the warm-up request failed: {result.error}",
                "fix the server or the method's params, then rerun",
            )

    def time_unit(
        self, unit: Sequence[_Task], method: DecodingMethod, baseline: str
    ) -> list[SampleRecord]:
        """Decode a unit (one prompt, or a batch) turn by turn; one record per prompt.

        Each turn of a multi-turn prompt sees the model's earlier answers. A batch is timed
        as a whole (``batch_wall_s``); a sequence's own ``wall_s`` is its latency, from the
        batch's start until it finished.
        """
        tokenizer = self.models.tokenizer
        seeds = [sample_seed(self.preset.sampling.seed, t.prompt_index, t.run) for t in unit]
        histories: list[list[tuple[str, str]]] = [[] for _ in unit]
        results: list[list[GenerationResult]] = [[] for _ in unit]
        prompt_tokens = [0] * len(unit)
        latency = [0.0] * len(unit)
        batch_wall = 0.0
        ledger = self._ledger()
        levels: list[GenerationResult] = []  # a served level's first result, per turn
        interrupted = False
        for turn in range(max(len(t.prompt.turns) for t in unit)):
            if interrupted:
                break
            # A conversation whose request failed goes no further.
            rows = [
                i
                for i, t in enumerate(unit)
                if turn < len(t.prompt.turns) and not (results[i] and results[i][-1].error)
            ]
            if not rows:
                break
            requests = []
            for i in rows:
                prompt = unit[i].prompt
                ids = self.encoder.encode(histories[i], prompt.turns[turn], prompt.system)
                messages = self.encoder.messages(histories[i], prompt.turns[turn], prompt.system)
                prompt_tokens[i] += len(ids)
                requests.append(self.request(ids, seeds[i] + 7919 * turn, messages))
            self._synchronize()
            start = time.perf_counter()
            with open_ledger(ledger):
                try:
                    if len(unit) == 1:
                        outputs = [method.generate(requests[0])]
                    else:
                        outputs = method.generate_batch(requests)
                except InterruptedGeneration as stop:
                    outputs, interrupted = stop.results, True
                self._synchronize()
            wall = time.perf_counter() - start
            batch_wall += wall
            if outputs and outputs[0].served is not None:
                levels.append(outputs[0])
            for i, output in zip(rows, outputs, strict=True):
                results[i].append(output)
                latency[i] += wall if output.latency_s is None else output.latency_s
                user = unit[i].prompt.turns[turn]
                histories[i].append((user, tokenizer.decode(output.tokens)))
        if interrupted:  # a conversation cut short by Ctrl-C is not a finished sample
            for i, t in enumerate(unit):
                row = results[i]
                if row and not row[-1].error and len(row) < len(t.prompt.turns):
                    error = f"interrupted (Ctrl-C) before turn {len(row) + 1}"
                    row.append(GenerationResult([], "error", DecodeStats(), error=error))
        batch_id = uuid.uuid4().hex[:8] if len(unit) > 1 else None
        costs = ledger_costs(ledger, method, [r for row in results for r in row], batch_wall)
        if self.probe is not None and costs.target_forwards and not interrupted:
            costs = costs.model_copy(update={"probed_ms": self.probe.near(costs)})
        serving = [serving_sample(row, levels) for row in results]
        records = [
            self._record(
                task,
                method,
                baseline,
                seeds[i],
                _merge(results[i]),
                latency[i],
                prompt_tokens[i],
                [answer for _, answer in histories[i]],
                [len(r.tokens) for r in results[i]],
                len(unit),
                batch_id,
                batch_wall,
                costs,
                serving[i],
            )
            for i, task in enumerate(unit)
            if results[i]
        ]
        if interrupted:
            raise InterruptedUnit(records)
        return records

    def _record(
        self,
        task: _Task,
        method: DecodingMethod,
        baseline: str,
        seed: int,
        merged: GenerationResult,
        wall: float,
        prompt_tokens: int,
        texts: list[str],
        turn_tokens: list[int],
        batch_size: int,
        batch_id: str | None,
        batch_wall: float,
        costs: PhaseCosts | None,
        serving: ServingSample | None = None,
    ) -> SampleRecord:
        sha = output_sha(merged.tokens)
        key = (task.prompt.id, task.run)
        if merged.error is None:  # a failed reference output is no reference
            self.outputs.setdefault(task.label, {})[key] = sha
        reference = self.references.get(task.label, baseline)
        matches = None
        # Synthetic acceptance keeps draft tokens the target never chose: no comparison.
        comparable = (
            self.sampling.greedy
            and not method.synthetic
            and task.label != reference
            and merged.error is None
        )
        if comparable and reference is not None and key in self.outputs.get(reference, {}):
            matches = self.outputs[reference][key] == sha
        if task.label not in self.engines:
            self.engines[task.label] = engine_info(method)
        scorer = task_for(task.prompt)
        score = scorer.score(task.prompt, texts[-1]) if scorer else None
        output = self.preset.output
        return SampleRecord(
            run_id=self.run_id,
            method=task.label,
            method_name=method.name,
            exact=method.exact and not method.synthetic,
            synthetic=method.synthetic,
            prompt_id=task.prompt.id,
            prompt_index=task.prompt_index,
            prompt_sha=task.prompt.sha,
            category=task.prompt.category,
            run=task.run,
            seed=seed,
            prompt_tokens=prompt_tokens,
            turns=len(texts),
            turn_new_tokens=turn_tokens,
            output_sha=sha,
            matches_baseline=matches,
            reference=reference,
            engine=self.engines[task.label],
            score=None if score is None else score.value,
            answer=None if score is None else score.answer,
            batch_size=batch_size,
            batch_id=batch_id,
            batch_wall_s=batch_wall,
            costs=costs,
            text="\n\n".join(texts) if output.save_text else None,
            turn_texts=texts if output.save_text and len(texts) > 1 else None,
            tokens=list(merged.tokens) if output.save_tokens else None,
            error=merged.error,
            serving=serving,
            **generation_metrics(merged, wall),
        )

    def _synchronize(self) -> None:
        for model in self.models.loaded:
            model.synchronize()

    def _ledger(self) -> CostLedger:
        """A cost ledger for one unit: which loaded model is the target, which the draft."""
        roles: dict[int, Literal["target", "draft"]] = {}
        if self.models.draft is not None:
            roles[id(self.models.draft)] = "draft"
        if self.models.loaded_target is not None:  # a model that is both counts as target
            roles[id(self.models.loaded_target)] = "target"
        loaded = self.models.loaded
        on_cuda = any(model.device.type == "cuda" for model in loaded)
        return CostLedger(roles, self._synchronize if on_cuda else None)


def _merge(results: Sequence[GenerationResult]) -> GenerationResult:
    """One result for a multi-turn sample: tokens concatenated, statistics added up."""
    if len(results) == 1:
        return results[0]
    stats = DecodeStats()
    for result in results:
        stats.merge(result.stats)
    tokens = [token for result in results for token in result.tokens]
    error = next((result.error for result in results if result.error), None)
    return GenerationResult(
        tokens=tokens, stop_reason=results[-1].stop_reason, stats=stats, error=error
    )
