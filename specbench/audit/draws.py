"""The audit's generations: one seed scheme for every method, each method's draws made once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.plugins import DecodingMethod

#: Audit draws never reuse a run's seeds.
AUDIT_SEED_OFFSET = 7_777_777


@dataclass
class Draws:
    """One method's generations for one prompt, in draw order."""

    prompt_ids: list[int]
    tokens: list[list[int]] = field(default_factory=list)


@dataclass
class DrawBook:
    """Draws ``samples`` generations of ``tokens`` tokens per prompt from a method, once per
    key, with seeds that depend only on the prompt, the draw and the stream: every method
    sees the same seeds, so identical samplers draw identical tokens."""

    prompts: list[list[int]]
    samples: int
    tokens: int
    sampling: SamplingParams
    seed: int
    stop: frozenset[int]
    report: Callable[[str], None]
    cache: dict[str, list[Draws]] = field(default_factory=dict)

    def request(self, ids: list[int], index: int, draw: int, stream: int) -> GenerationRequest:
        """The request of draw ``draw`` of prompt ``index`` on seed stream ``stream``."""
        seed = AUDIT_SEED_OFFSET + self.seed * 1_000_003 + index * 100_003 + draw
        return GenerationRequest(
            ids, self.tokens, self.sampling, seed + stream * 7_777_777, self.stop
        )

    def of(self, key: str, method: DecodingMethod, stream: int = 0) -> list[Draws]:
        """``method``'s draws, made on the first call for ``key`` and kept.

        ``stream`` 1 draws with other seeds: a two-sample test needs independent samples, and
        an engine may consume its random numbers alike with and without speculation."""
        if key in self.cache:
            return self.cache[key]
        out = []
        for index, ids in enumerate(self.prompts):
            draws = Draws(ids)
            for draw in range(self.samples):
                if draw % 100 == 0:
                    where = f"{key}: prompt {index + 1}/{len(self.prompts)}"
                    self.report(
                        where + (f", draw {draw}/{self.samples}" if self.samples > 1 else "")
                    )
                result = method.generate(self.request(ids, index, draw, stream))
                draws.tokens.append(list(result.tokens))
            out.append(draws)
        self.cache[key] = out
        return out

    def identical_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """Keys (in order) whose draws were the same, token for token: groups of two or more."""
        groups: dict[tuple[tuple[int, ...], ...], list[str]] = {}
        for key in keys:
            if key in self.cache:
                draws = tuple(tuple(t) for prompt in self.cache[key] for t in prompt.tokens)
                groups.setdefault(draws, []).append(key)
        return [group for group in groups.values() if len(group) > 1]
