"""The JSONL record schema (the one place it is defined), and reading and writing it.

A results file holds, in order of writing:

* ``record: "run"``: one header per session that wrote to the file (a resumed run adds one),
  with the effective preset, its hash, versions, device and seed.
* ``record: "sample"``: one per method x prompt x run, appended and flushed as it finishes.
* ``record: "summary"``: one per method once every sample of the run is in.
* ``record: "run_end"``: when a session stops (finished, interrupted or failed), with the
  machine's load then; the header holds the load at the start.
* ``record: "audit"``: the verdicts of ``specbench audit`` (audit files only).

Every line is a complete JSON object, written with one ``write`` call and flushed, so an
interrupted run leaves a valid file; a reader ignores a torn last line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from specbench.errors import SpecbenchError

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str


class RunHeader(_Record):
    """Written when a session starts writing to a results file."""

    record: Literal["run"] = "run"
    session: int = Field(description="1 for the first session, 2 after one resume, ...")
    started_at: str
    preset_name: str
    preset_source: str
    preset_hash: str
    preset: dict[str, Any]
    seed: int
    environment: dict[str, Any]
    models: dict[str, Any]
    load: dict[str, float | int] = Field(
        default_factory=dict,
        description="Load averages and CPU count at the start (the end is in run_end).",
    )
    worker: str | None = Field(
        None, description="Distributed runs: the worker (shard@host:pid) this session ran on."
    )
    command: list[str] | None = Field(
        None,
        description="The `specbench run` arguments that wrote this session (preset, flags, "
        "--set, --sweep), where a command line did.",
    )
    unit_costs: dict[str, Any] | None = Field(
        None,
        description="What one forward of each in-process model costs, probed before decoding "
        "(specbench.costs.units.UnitCosts): the basis of each summary's predicted ms/token.",
    )


PHASES = ("draft", "target", "verify", "host")


class PhaseCosts(BaseModel):
    """The cost ledger of the unit a sample was decoded in (see
    :mod:`specbench.models.ledger`): its wall time split by phase. ``None`` marks a phase
    the method could not measure (an external engine, transformers' own loop), never zero.

    The unit is the sample itself, or the batch it was decoded in (``batch_id``); then every
    sample of the batch carries the batch's ledger, and the parts sum to ``batch_wall_s``.
    """

    model_config = ConfigDict(extra="forbid")

    unit_s: float = Field(description="The wall time the phases split (sample or batch).")
    draft_s: float | None = None
    target_s: float | None = None
    verify_s: float | None = None
    host_s: float | None = Field(None, description="The wall time the other phases leave.")
    target_forwards: int | None = None
    target_rows: int | None = Field(None, description="Tokens the target's forwards processed.")
    draft_forwards: int | None = Field(None, description="Draft-model forward calls.")
    target_by_rows: dict[int, tuple[int, float]] = Field(
        default_factory=dict,
        description="Target forwards by the tokens they processed: rows -> (calls, seconds).",
    )
    draft_by_rows: dict[int, tuple[int, float]] = Field(
        default_factory=dict, description="Draft-model forwards, the same way."
    )
    syncs: int = Field(0, description="Device synchronisations the ledger added (CUDA only).")
    overlapped_draft_s: float | None = Field(
        None,
        description="Draft work a worker process did while the target worked (asynchronous "
        "speculation): beside the phases, not part of unit_s; the target's waits for it are "
        "draft_s.",
    )
    overlapped_draft_forwards: int | None = Field(
        None, description="Draft forwards the worker made (overlapped or waited for)."
    )
    engines: dict[str, str] = Field(
        default_factory=dict,
        description="The engine kind each role's forwards ran on (eager, static, graphs, "
        "compiled; mixed): which probed unit costs price them.",
    )
    probed_ms: dict[str, dict[int, float]] = Field(
        default_factory=dict,
        description="Chain forwards of the unit's own decoding-step sizes, timed right after "
        "it on the same engines (role -> rows -> ms): what a summary prices its forwards at, "
        "free of the machine's drift since the run's probe.",
    )

    def seconds(self, phase: str) -> float | None:
        value: float | None = getattr(self, f"{phase}_s")
        return value


class RequestTiming(BaseModel):
    """One request to a server, as the client timed it (seconds from sending it)."""

    model_config = ConfigDict(extra="forbid")

    sent_s: float = Field(description="When it was sent, from the start of its load level.")
    ttft_s: float | None = Field(description="Time to the first chunk that carried output.")
    e2e_s: float = Field(description="Time to the end of the stream.")
    itl_s: list[float] = Field(
        default_factory=list,
        description="Inter-token latencies: the gaps between output chunks (a chunk may "
        "carry several tokens, as vllm bench serve counts them).",
    )
    tpot_s: float | None = Field(
        None, description="Time per output token after the first: (e2e - ttft) / (tokens - 1)."
    )
    output_tokens: int = Field(0, description="The server's usage count, else the stream's.")
    usage_tokens: int | None = Field(None, description="completion_tokens of the usage chunk.")
    stream_tokens: int = Field(0, description="Tokens the stream carried (see output_ids).")
    output_ids: Literal["server", "retokenized"] = Field(
        "server", description="Ids the server streamed, or its text encoded again by specbench."
    )
    error: str | None = None


class ServingSample(BaseModel):
    """How a sample was served: the load it ran under and each of its requests (one per
    turn). ``counters`` and ``level_wall_s`` belong to the whole level (every sample of one
    ``batch_id`` carries the same)."""

    model_config = ConfigDict(extra="forbid")

    api: Literal["completions", "chat"]
    prompt_as: Literal["token_ids", "text"]
    concurrency: int
    request_rate: float | None = None
    requests: list[RequestTiming]
    level_wall_s: float = Field(description="The level's first send to its last answer.")
    counters: dict[str, Any] | None = Field(
        None,
        description="The server's speculative counters over the level (/metrics after minus "
        "before): drafts, draft_tokens, accepted, accepted_per_position.",
    )


class SampleRecord(_Record):
    """One generation: one method on one prompt, one run."""

    record: Literal["sample"] = "sample"
    method: str = Field(description="The method's label in the preset (its name by default).")
    method_name: str
    exact: bool
    synthetic: bool = Field(
        False, description="Acceptance was simulated (timing on dummy weights): not real output."
    )
    prompt_id: str
    prompt_index: int
    prompt_sha: str = Field(
        "",
        description="Fingerprint of the prompt's text (turns, system): resume refuses a "
        "file whose prompts changed under the same ids.",
    )
    category: str | None = None
    run: int
    seed: int
    prompt_tokens: int = Field(description="Prompt tokens over all turns.")
    turns: int = 1
    turn_new_tokens: list[int] = Field(default_factory=list)
    new_tokens: int
    stop_reason: str
    wall_s: float
    tokens_per_sec: float
    steps: int
    target_calls: int
    draft_calls: int
    proposed: int
    accepted: int
    rejections: int
    verified: int = Field(description="Draft tokens the verifier examined (up to a rejection).")
    acceptance_rate: float | None = Field(
        description="accepted / verified: the per-token acceptance probability (alpha)."
    )
    proposal_acceptance: float | None = Field(
        description="accepted / proposed: the share of drafted tokens that were kept."
    )
    expected_acceptance_rate: float | None = Field(
        description="Mean acceptance probability over verified draft positions (theory)."
    )
    avg_tokens_per_step: float = Field(
        description="new_tokens / target_calls: counts the bonus or correction token."
    )
    accepted_per_step: float = Field(description="accepted / steps: drafts only, no bonus.")
    target_calls_per_token: float
    position_verified: list[int]
    position_accepted: list[int]
    stats: dict[str, float] = Field(default_factory=dict)
    output_sha: str = Field("", description="Fingerprint of the generated tokens.")
    matches_baseline: bool | None = Field(
        None,
        description="Greedy runs: output identical to the reference's (the run's baseline, or "
        "an engine's own plain decoding), token for token.",
    )
    reference: str | None = Field(
        None, description="The method label this sample's output and speed are compared with."
    )
    engine: dict[str, Any] | None = Field(
        None, description="External engines: {name, version, options} of the engine used."
    )
    worker: str | None = Field(None, description="Distributed runs: the worker that decoded it.")
    batch_size: int = Field(1, description="Prompts decoded together in this sample's batch.")
    batch_id: str | None = Field(None, description="Samples decoded in one batch share it.")
    batch_wall_s: float | None = Field(
        None, description="Wall time of the whole batch; wall_s is this sequence's latency."
    )
    costs: PhaseCosts | None = Field(
        None, description="Where the wall time went, by phase (the cost ledger)."
    )
    score: float | None = Field(None, description="Task score: 1.0 correct, 0.0 wrong.")
    answer: str | None = Field(None, description="The answer the task read from the output.")
    text: str | None = None
    turn_texts: list[str] | None = None
    tokens: list[int] | None = None
    error: str | None = Field(
        None,
        description="Why the sample failed (a server's error, a timeout, a cut stream): it is "
        "left out of summaries, and --resume runs it again.",
    )
    serving: ServingSample | None = Field(
        None, description="Server methods: the load level and each request's latencies."
    )

    @property
    def failed(self) -> bool:
        return self.error is not None


class ServingSummary(BaseModel):
    """One server configuration at one load level: latency percentiles over its requests,
    throughput over the level's wall time, and the server's speculative counters."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int
    request_rate: float | None = None
    requests: int = Field(description="Requests that finished (failed ones excluded).")
    failed_requests: int = 0
    output_tokens: int
    wall_s: float = Field(description="Sum of the levels' wall times (one level per run).")
    output_tokens_per_s: float
    requests_per_s: float
    ttft_ms: dict[str, float] = Field(description="p50, p90, p99 and mean of TTFT.")
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    token_count_mismatches: int = Field(
        0, description="Requests whose usage count differs from the ids the server streamed."
    )
    drafts: int | None = None
    draft_tokens: int | None = None
    accepted: int | None = None
    acceptance_rate: float | None = Field(
        None, description="accepted / draft_tokens (scales with the draft length)."
    )
    acceptance_length: float | None = Field(
        None, description="1 + accepted / drafts: tokens per verification step."
    )
    position_marginal: list[float] = Field(
        default_factory=list,
        description="Marginal acceptance per position: accepted at i / drafts (vLLM's "
        "per-position rate; acceptance_length = 1 + their sum).",
    )
    position_conditional: list[float | None] = Field(
        default_factory=list,
        description="Conditional acceptance per position: accepted at i / accepted at i - 1.",
    )


class SummaryRecord(_Record):
    """Aggregate of one method's samples; ``speedup`` divides by the baseline's."""

    record: Literal["summary"] = "summary"
    method: str
    method_name: str
    exact: bool
    synthetic: bool = False
    samples: int
    new_tokens: int
    tokens_per_sec_median: float
    tokens_per_sec_p25: float
    tokens_per_sec_p75: float
    tokens_per_sec_min: float
    tokens_per_sec_max: float
    wall_s_median: float
    wall_s_total: float
    batch_size: int = 1
    throughput_tokens_per_sec: float = Field(
        0.0, description="All new tokens over the wall time of all batches (each counted once)."
    )
    acceptance_rate: float | None
    proposal_acceptance: float | None
    expected_acceptance_rate: float | None
    avg_tokens_per_step: float
    accepted_per_step: float
    target_calls_per_token: float
    position_acceptance: list[float | None] = Field(
        description="Conditional acceptance per draft position: accepted at i / reached i."
    )
    position_marginal: list[float] = Field(
        default_factory=list,
        description="Marginal acceptance per draft position: accepted at i / steps (the share "
        "of steps whose first i + 1 drafts were all kept).",
    )
    acceptance_length: float | None = Field(
        None,
        description="Per-step mean tokens per step implied by the profile: 1 + sum(marginal).",
    )
    acceptance_length_request_mean: float | None = Field(
        None, description="Per-request mean of each sample's 1 + accepted / steps."
    )
    tokens_per_step_request_mean: float | None = Field(
        None, description="Per-request mean of avg_tokens_per_step (avg_tokens_per_step pools)."
    )
    tokens_per_sec_ci: tuple[float, float] | None = Field(
        None, description="95% bootstrap interval of the median tokens/s (prompts resampled)."
    )
    speedup_ci: tuple[float, float] | None = Field(
        None, description="95% paired bootstrap interval of the speedup (prompts resampled)."
    )
    noise: list[str] = Field(
        default_factory=list, description="One line per reason the timing may not be trusted."
    )
    greedy_match_rate: float | None = Field(
        None, description="Greedy runs: share of samples identical to the baseline's output."
    )
    score_mean: float | None = Field(
        None, description="Mean task score (GSM8K accuracy, HumanEval pass@1)."
    )
    scored: int = 0
    speedup: float | None = Field(
        description="Median tokens/s over the baseline's median tokens/s, same run."
    )
    baseline: str | None
    reference: str | None = Field(
        None, description="The method's own reference (an engine's plain decoding, say)."
    )
    reference_speedup: float | None = Field(
        None, description="Median tokens/s over the reference's: the within-engine speedup."
    )
    reference_speedup_ci: tuple[float, float] | None = None
    engine: str | None = Field(None, description="The external engine's name and version.")
    ms_per_token_by_phase: dict[str, float | None] | None = Field(
        None,
        description="The cost ledger: ms per generated token by phase (draft, target, "
        "verify, host; null where unknown); the phases sum to measured_ms_per_token.",
    )
    measured_ms_per_token: float | None = Field(
        None, description="Wall time of the samples (each batch once) per generated token."
    )
    predicted_ms_per_token: float | None = Field(
        None,
        description="What the method's own forwards cost at the run's unit costs (with free "
        "verification and host work): the loop's floor for these models.",
    )
    predicted_ms_by_phase: dict[str, float] | None = None
    cost_level: float | None = Field(
        None,
        description="The run's speed against the first unit-cost probe, median over units: "
        "each unit's own probe (timed right after it) over the first, or, for records "
        "without one, the baseline's one-token target steps on the same prompt over the "
        "probe's (a shared machine's bandwidth drifts).",
    )
    cost_gap_phase: str | None = Field(
        None,
        description="Where measured exceeds predicted by more than 5%: the phase holding "
        "most of the difference.",
    )
    stats: dict[str, float] = Field(default_factory=dict)
    failed: int = Field(0, description="Samples that failed (not in any figure above).")
    serving: ServingSummary | None = Field(
        None, description="Server methods: the load level's latency percentiles and counters."
    )


class RunEnd(_Record):
    """Written when a session stops writing (finished, interrupted or failed)."""

    record: Literal["run_end"] = "run_end"
    session: int
    finished_at: str
    status: Literal["finished", "interrupted", "failed"]
    load: dict[str, float | int] = Field(
        default_factory=dict, description="Load averages and CPU count when the session ended."
    )


class AuditRecord(_Record):
    """One method's verdict from ``specbench audit``, with every test behind it."""

    # An impossible token makes a statistic infinite: written as the string "Infinity".
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    record: Literal["audit"] = "audit"
    method: str
    method_name: str
    exact: bool
    mode: Literal["sampling", "greedy", "lossy"]
    test: str = Field(description="The test that decided the verdict (the smallest p-value).")
    statistic: float | None = None
    df: int | None = None
    p_value: float | None = None
    alpha: float | None = Field(None, description="Per-test level after Bonferroni.")
    family_alpha: float | None = None
    verdict: Literal["pass", "fail", "near-tie", "lossy", "error", "reference"]
    detail: str = ""
    divergence: float | None = Field(
        None, description="Lossy methods: share of generated tokens that differ from the baseline."
    )
    tests: list[dict[str, Any]] = Field(default_factory=list)


AnyRecord = RunHeader | SampleRecord | SummaryRecord | RunEnd | AuditRecord
Record = Annotated[AnyRecord, Field(discriminator="record")]
_RECORD = TypeAdapter(Record)


class RecordWriter:
    """Appends records to a JSONL file, one flushed line each."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self.path = path
        self._handle: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: AnyRecord) -> None:
        self._handle.write(record.model_dump_json() + "\n")
        # Flushed per record so a crash or Ctrl-C keeps every finished sample.
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[AnyRecord]:
    """Every record in a results file; a torn final line is skipped, other damage is an error."""
    return list(iter_records(path))


def iter_records(path: Path) -> Iterator[AnyRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError as error:
        raise SpecbenchError(f"cannot read {path}: {error.strerror}", "check the path") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines) and not line.endswith("\n")
        try:
            data = json.loads(line)
            _check_is_record(data, path, number)
            yield _RECORD.validate_python(data)
        except (json.JSONDecodeError, ValidationError) as error:
            if torn:
                return
            raise SpecbenchError(
                f"{path}:{number} is not a specbench record ({_first_line(error)})",
                "was this file written by specbench? remove the line or use another file",
            ) from error


_PROMPT_FIELDS = ("prompt", "turns", "messages", "question", "question_id")


def _check_is_record(data: Any, path: Path, number: int) -> None:
    """A line without ``record`` is some other JSONL: say which kind, not a pydantic error."""
    if isinstance(data, dict) and "record" in data:
        return
    if isinstance(data, dict) and any(field in data for field in _PROMPT_FIELDS):
        raise SpecbenchError(
            f"{path} is a prompt file (line {number} holds a prompt), not results",
            'run it first: name it in a preset\'s [prompts] table (source = "jsonl", path = '
            "...) and `specbench run` that preset; report reads the file run writes",
        )
    raise SpecbenchError(
        f"{path}:{number} is not a specbench record (no 'record' field)",
        "pass a results file written by specbench run",
    )


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a write cut short by a crash) before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as handle:
        handle.truncate(keep)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0]
