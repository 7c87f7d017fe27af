"""Run a validated preset: load models once, warm up, time every method on every prompt.

Prompts run in the outer loop and methods in the inner one, so slow drift of the machine
(thermals, other load) affects every method alike. Each sample is written and flushed as it
finishes; summaries are written once all samples are in. ``resume`` continues a results file
and skips every (method, prompt, run) it already holds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.environment import collect_environment
from specbench.errors import SpecbenchError
from specbench.models.loading import load_models
from specbench.plugins import DecodingMethod, MethodModels
from specbench.presets import Preset, ResolvedPreset
from specbench.progress import MethodProgress, Phase, Progress, ProgressCallback
from specbench.prompts import Prompt
from specbench.records import (
    RecordWriter,
    RunHeader,
    SampleRecord,
    SummaryRecord,
    read_records,
)
from specbench.summary import generation_metrics, summarize


@dataclass
class RunOutcome:
    """What a finished run wrote."""

    output: Path
    summaries: list[SummaryRecord]
    written: int
    skipped: int


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
    prompt_ids: list[int]
    run: int
    label: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.label, self.prompt.id, self.run)


def sample_seed(base_seed: int, prompt_index: int, run: int) -> int:
    """The seed of one (prompt, run): the same for every method, independent of order."""
    return base_seed * 1_000_003 + prompt_index * 1_009 + run


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
) -> RunOutcome:
    """Run every method of ``resolved`` and write records to the results file."""
    path = resolve_output(resolved, output, resume)
    previous = _previous_records(path, resolved, resume)
    done = {(s.method, s.prompt_id, s.run) for s in previous if isinstance(s, SampleRecord)}
    headers = [r for r in previous if isinstance(r, RunHeader)]
    run_id = headers[0].run_id if headers else uuid.uuid4().hex[:12]
    report = on_progress or (lambda progress: None)

    preset = resolved.preset
    report(Progress("loading", "loading models", path))
    models = load_models(preset.models, lambda message: report(Progress("loading", message, path)))
    prompts = preset.prompts.load(resolved.base_dir)
    tokenizer = models.target.tokenizer
    encoded = [tokenizer.encode(p.text) for p in prompts]
    for prompt, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise SpecbenchError(f"prompt {prompt.id} encodes to no tokens", "remove or fix it")
    methods = {
        m.label: _instantiate(m.label, m.info.cls, m.params, models) for m in resolved.methods
    }
    labels = list(methods)
    tasks = [
        _Task(i, prompt, ids, run, label)
        for i, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True))
        for run in range(preset.runs.count)
        for label in labels
    ]
    todo = [t for t in tasks if t.key not in done]
    previous_samples = [r for r in previous if isinstance(r, SampleRecord)]
    has_summaries = any(isinstance(r, SummaryRecord) for r in previous)
    if not todo and has_summaries:
        summaries = [r for r in previous if isinstance(r, SummaryRecord)]
        report(Progress("done", "nothing left to run", path))
        return RunOutcome(path, summaries, written=0, skipped=len(tasks))

    sampling = SamplingParams(
        temperature=preset.sampling.temperature,
        top_k=preset.sampling.top_k,
        top_p=preset.sampling.top_p,
    )
    stop_ids = frozenset(tokenizer.eos_token_ids)
    tracker = _Tracker(labels, tasks, previous_samples, preset.runs.baseline, run_id, path)
    written = 0
    where = "starting"
    with RecordWriter(path) as writer:
        writer.write(
            RunHeader(
                run_id=run_id,
                session=len(headers) + 1,
                started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                preset_name=resolved.name,
                preset_source=resolved.source,
                preset_hash=resolved.hash,
                preset=resolved.effective(),
                seed=preset.sampling.seed,
                environment=collect_environment(),
                models={
                    "target": models.target.describe(),
                    **({"draft": models.draft.describe()} if models.draft else {}),
                },
            )
        )
        try:
            pending = {t.label for t in todo}
            for label in labels:
                if label not in pending:
                    continue
                for w in range(preset.runs.warmup):
                    where = f"warm-up of {label}"
                    report(tracker.snapshot("warmup", f"warming up {label} ({w + 1})"))
                    methods[label].generate(
                        GenerationRequest(
                            prompt_ids=tasks[0].prompt_ids,
                            max_new_tokens=preset.sampling.max_new_tokens,
                            sampling=sampling,
                            seed=sample_seed(preset.sampling.seed, -1, w),
                            stop_token_ids=stop_ids,
                        )
                    )
            for task in todo:
                where = f"{task.label} on prompt {task.prompt.id} (run {task.run})"
                record = _time_one(
                    task, methods[task.label], models, sampling, stop_ids, preset, run_id
                )
                writer.write(record)
                written += 1
                report(tracker.add(record))
            summaries = summarize(tracker.samples, preset.runs.baseline, run_id)
            for summary in summaries:
                writer.write(summary)
        except (Exception, KeyboardInterrupt) as error:
            raise RunAborted(error, path, written, where) from error
    report(tracker.snapshot("done", "finished"))
    return RunOutcome(path, summaries, written=written, skipped=len(tasks) - len(todo))


def _previous_records(
    path: Path, resolved: ResolvedPreset, resume: bool
) -> list[RunHeader | SampleRecord | SummaryRecord]:
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
        raise SpecbenchError(
            f"{path} was written by a different preset or different overrides "
            f"(hash {headers[0].preset_hash}, now {resolved.hash})",
            "resume with the same preset and flags, or start a new file with --output",
        )
    return records


def _instantiate(
    label: str, cls: type[DecodingMethod], params: object, models: MethodModels
) -> DecodingMethod:
    try:
        return cls(params, models)  # type: ignore[arg-type]
    except SpecbenchError:
        raise
    except Exception as error:
        raise SpecbenchError(
            f"method '{label}' failed to start: {type(error).__name__}: {error}",
            "check its parameters; `specbench methods` shows where it comes from",
        ) from error


def _time_one(
    task: _Task,
    method: DecodingMethod,
    models: MethodModels,
    sampling: SamplingParams,
    stop_ids: frozenset[int],
    preset: Preset,
    run_id: str,
) -> SampleRecord:
    seed = sample_seed(preset.sampling.seed, task.prompt_index, task.run)
    request = GenerationRequest(
        prompt_ids=task.prompt_ids,
        max_new_tokens=preset.sampling.max_new_tokens,
        sampling=sampling,
        seed=seed,
        stop_token_ids=stop_ids,
    )
    _synchronize(models)
    start = time.perf_counter()
    result = method.generate(request)
    _synchronize(models)
    wall = time.perf_counter() - start
    tokenizer = models.target.tokenizer
    return SampleRecord(
        run_id=run_id,
        method=task.label,
        method_name=method.name,
        exact=method.exact,
        prompt_id=task.prompt.id,
        prompt_index=task.prompt_index,
        category=task.prompt.category,
        run=task.run,
        seed=seed,
        prompt_tokens=len(task.prompt_ids),
        text=tokenizer.decode(result.tokens) if preset.output.save_text else None,
        tokens=list(result.tokens) if preset.output.save_tokens else None,
        **generation_metrics(result, wall),
    )


def _synchronize(models: MethodModels) -> None:
    models.target.synchronize()
    if models.draft is not None:
        models.draft.synchronize()


class _Tracker:
    """Running per-method summaries for the progress callback."""

    def __init__(
        self,
        labels: Sequence[str],
        tasks: Sequence[_Task],
        previous: Sequence[SampleRecord],
        baseline: str,
        run_id: str,
        output: Path,
    ) -> None:
        self.labels = list(labels)
        self.totals = {label: sum(t.label == label for t in tasks) for label in labels}
        wanted = {t.key for t in tasks}
        self.samples = [s for s in previous if (s.method, s.prompt_id, s.run) in wanted]
        self.baseline = baseline
        self.run_id = run_id
        self.output = output

    def add(self, record: SampleRecord) -> Progress:
        self.samples.append(record)
        progress = self.snapshot("running", f"{record.method} on {record.prompt_id}")
        progress.last = record
        return progress

    def snapshot(self, phase: Phase, message: str) -> Progress:
        summaries = {s.method: s for s in summarize(self.samples, self.baseline, self.run_id)}
        rows = [
            MethodProgress(
                label=label,
                done=sum(s.method == label for s in self.samples),
                total=self.totals[label],
                summary=summaries.get(label),
            )
            for label in self.labels
        ]
        return Progress(phase, message, self.output, rows)
