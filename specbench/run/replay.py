"""Acceptance replay: what a draft-free method would have accepted on a greedy run's outputs.

At temperature 0 the target's output is known once a run saved it (``save_tokens``), and a
draft-free drafter never looks at the target's logits: so replaying the outputs through the
drafter, with the target's choices read from the saved tokens instead of computed, gives
exactly the steps, acceptances and per-position profile a real greedy run of that drafter
would have had, in seconds and without loading any model (only the tokenizer, to encode the
prompts). Methods opt in through :meth:`DecodingMethod.replay_proposer`; drafters that learn
from the target's logits (Token Recycling, Lookahead) or need a draft model cannot be
replayed.

The replay follows the runner's order, run by run and prompt by prompt, so state that persists
across requests (Suffix Decoding's global trie) evolves as in the real run; warm-ups leave no
state behind (``DecodingMethod.end_warmup``), so none is replayed.
Only single-turn samples are replayed. One edge is not reproduced: a real run's tree walk may
accept tokens past an end-of-sequence token before the output is cut there; the replay stops
at the saved output's end.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specbench.decoding.execution import EngineSessions
from specbench.decoding.proposers import Outcome, Proposer, Slot
from specbench.decoding.sampling import SamplingParams
from specbench.decoding.tree import TokenTree, walk_tree_with
from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult
from specbench.errors import SpecbenchError
from specbench.models.loading import load_tokenizer
from specbench.plugins import MethodInfo, MethodParams
from specbench.presets.schema import Preset
from specbench.prompts.conversation import PromptEncoder
from specbench.records import RunHeader, SampleRecord, read_records


@dataclass
class ReplaySample:
    """One replayed generation: the saved output and the statistics the drafter earns."""

    prompt_id: str
    run: int
    new_tokens: int
    stats: DecodeStats


@dataclass
class ReplayResult:
    """One configuration's replay over every replayed sample."""

    label: str
    params: dict[str, Any]
    samples: list[ReplaySample] = field(default_factory=list)
    skipped: int = 0

    def total(self, name: str) -> int:
        return int(sum(getattr(s.stats, name) for s in self.samples))

    @property
    def new_tokens(self) -> int:
        return sum(s.new_tokens for s in self.samples)

    @property
    def tokens_per_call(self) -> float:
        calls = self.total("target_calls")
        return self.new_tokens / calls if calls else 0.0

    @property
    def accepted_per_step(self) -> float:
        steps = self.total("steps")
        return self.total("accepted") / steps if steps else 0.0

    def position_acceptance(self) -> list[float | None]:
        width = max((len(s.stats.position_verified) for s in self.samples), default=0)
        out: list[float | None] = []
        for i in range(width):
            verified = sum(_at(s.stats.position_verified, i) for s in self.samples)
            accepted = sum(_at(s.stats.position_accepted, i) for s in self.samples)
            out.append(accepted / verified if verified else None)
        return out


def _at(values: Sequence[int], index: int) -> int:
    return values[index] if index < len(values) else 0


@dataclass
class ReplaySource:
    """The saved greedy outputs of one method of a results file, with their prompts."""

    header: RunHeader
    preset: Preset
    outputs: list[tuple[SampleRecord, list[int]]]  # (sample, prompt ids)
    skipped: int


def load_source(path: Path, source_label: str | None = None) -> ReplaySource:
    """Read a greedy results file and encode the prompts of one method's saved outputs."""
    records = read_records(path)
    headers = [r for r in records if isinstance(r, RunHeader)]
    if not headers:
        raise SpecbenchError(f"{path} has no run header", "pass a file written by specbench run")
    header = headers[0]
    preset = Preset.model_validate(header.preset)
    if preset.sampling.temperature != 0:
        raise SpecbenchError(
            f"{path} was sampled at temperature {preset.sampling.temperature}: the outputs are "
            "not the target's greedy choices",
            "replay a greedy run (temperature 0)",
        )
    label = source_label or preset.runs.baseline
    samples = [r for r in records if isinstance(r, SampleRecord) and r.method == label]
    if not samples:
        raise SpecbenchError(f"{path} has no samples of '{label}'", "name one with --from")
    if all(s.tokens is None for s in samples):
        raise SpecbenchError(f"{path} saved no tokens", "rerun with --set output.save_tokens=true")
    base_dir = Path(header.preset_source).parent
    prompts = {p.id: p for p in preset.prompts.load(base_dir)}
    tokenizer = load_tokenizer(preset.models.target, local_only=True)
    encoder = PromptEncoder(tokenizer, preset.prompts.chat_template, preset.prompts.system_prompt)
    outputs = []
    skipped = 0
    for sample in sorted(samples, key=lambda s: (s.run, s.prompt_index)):
        prompt = prompts.get(sample.prompt_id)
        if sample.tokens is None or sample.turns != 1 or prompt is None:
            skipped += 1
            continue
        outputs.append((sample, encoder.encode([], prompt.turns[0], prompt.system)))
    return ReplaySource(header, preset, outputs, skipped)


def replay(
    source: ReplaySource,
    info: MethodInfo,
    configurations: Sequence[tuple[str, MethodParams]],
    on_progress: Callable[[str], None] | None = None,
) -> list[ReplayResult]:
    """Replay ``source``'s outputs through ``info``'s drafter, once per configuration."""
    report = on_progress or (lambda message: None)
    results = []
    for label, params in configurations:
        proposer = info.cls.replay_proposer(params)
        if proposer is None:
            raise SpecbenchError(
                f"method '{info.name}' cannot be replayed: its drafts depend on model outputs",
                "replay a draft-free method that declares replay_proposer (suffix, prompt-lookup)",
            )
        report(f"replaying {label}")
        result = ReplayResult(label, params.model_dump(mode="json"), skipped=source.skipped)
        # No warm-up to replay: methods forget what their warm-up taught them (end_warmup).
        for sample, prompt_ids in source.outputs:
            stats = _replay_one(proposer, prompt_ids, sample.tokens or [], source.preset)
            tokens = len(sample.tokens or [])
            result.samples.append(ReplaySample(sample.prompt_id, sample.run, tokens, stats))
        results.append(result)
    return results


def _replay_one(
    proposer: Proposer, prompt_ids: list[int], output: list[int], preset: Preset
) -> DecodeStats:
    max_new = preset.sampling.max_new_tokens
    request = GenerationRequest(prompt_ids, max_new, SamplingParams(0.0), seed=0)
    proposer.start([request], EngineSessions())
    stats = DecodeStats()
    sequence = list(prompt_ids)
    produced = 0
    while produced < len(output):
        remaining = output[produced:]
        (draft,) = proposer.propose([Slot(0, sequence, max_new - produced - 1)])
        tree = draft if isinstance(draft, TokenTree) else TokenTree.chain(draft.tokens)
        path, token, verified = walk_tree_with(tree, _saved_choices(remaining))
        stats.record_walk(len(tree), len(path), verified)
        stats.target_calls += 1
        proposer.observe([Outcome(0, sequence, draft, path, token)])
        step = remaining[: len(path) + 1]
        sequence += step
        produced += len(step)
    proposer.finish([GenerationResult(list(output), "length", stats)])
    return stats


def _saved_choices(remaining: list[int]) -> Callable[[int], int]:
    """The core's walk with the saved output as the target's choice at each depth (a
    verifier that accepts the saved token). Past the end of the output (it ended with an
    end-of-sequence token) nothing matches, and the step ends there as the real run's
    commit does."""
    depth = itertools.count()

    def saved(_row: int) -> int:
        at = next(depth)
        return remaining[at] if at < len(remaining) else -1

    return saved
