"""A fake external engine and a custom model backend, installed in tests as third-party
plugins would be (a distribution with entry points).

* backend ``counting``: toy models whose loads are counted in ``LOADS`` (a run of engines
  alone must load none, only the tokenizer).
* method ``fake-remote``: an "engine" that needs no in-process model; it builds its own toy
  model from the preset's specs in ``prepare`` and counts ``close`` calls. With
  ``speculative = true`` it reports engine-style counters (every draft accepted at position
  0); ``diverge = true`` makes its greedy output differ from its plain decoding.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from specbench.decoding.core import decode
from specbench.methods.external_engines import SpecCounters, counter_stats
from specbench.models.backends import ModelBackend
from specbench.models.base import LanguageModel, Tokenizer
from specbench.models.spec_base import ModelSpecBase
from specbench.models.toy import ToyConfig, ToyLanguageModel, ToyTokenizer
from specbench.plugins import (
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    MethodParams,
    RunContext,
)

LOADS: list[str] = []
CLOSED: list[str] = []


class CountingSpec(ModelSpecBase):
    backend: str = "counting"
    vocab_size: int = Field(24, ge=4)
    seed: int = 0


class CountingBackend(ModelBackend):
    name = "counting"
    description = "TEST ONLY: toy models whose loads are counted."
    Spec = CountingSpec

    def load(self, spec: Any, role: str) -> LanguageModel:
        LOADS.append(role)
        return ToyLanguageModel(ToyConfig(vocab_size=spec.vocab_size, seed=spec.seed), role)

    def load_tokenizer(self, spec: Any, local_only: bool = True) -> Tokenizer:
        return ToyTokenizer(spec.vocab_size)


class FakeRemoteParams(MethodParams):
    speculative: bool = False
    diverge: bool = False
    fail_at: int = Field(-1, description="Raise on this call (counted from 0).")


class FakeRemoteMethod(EngineMethod[FakeRemoteParams]):
    name = "fake-remote"
    description = "TEST ONLY: an external engine that loads its own model."
    needs: ClassVar[frozenset] = frozenset()
    Params = FakeRemoteParams
    in_all = False

    def __init__(self, params: FakeRemoteParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.engine: ToyLanguageModel | None = None
        self.calls = 0
        self.label = ""

    def prepare(self, context: RunContext) -> None:
        spec = self.models.require_specs().target
        self.engine = ToyLanguageModel(ToyConfig(vocab_size=spec.vocab_size, seed=spec.seed), "e")
        self.label = context.label

    def own_baseline(self) -> FakeRemoteParams | None:
        return FakeRemoteParams(fail_at=self.params.fail_at)  # type: ignore[attr-defined]

    def engine_info(self) -> dict[str, Any]:
        return {"name": "fake", "version": "1.0", "options": self.params.model_dump()}

    def close(self) -> None:
        CLOSED.append(self.label)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        params = self.params
        assert self.engine is not None
        if self.calls == params.fail_at:
            raise RuntimeError("the engine crashed")
        self.calls += 1
        (result,) = decode([request], self.engine)
        tokens = list(result.tokens)
        if params.diverge and len(tokens) > 3:
            tokens[3] = (tokens[3] + 1) % 24
        if not params.speculative:
            return result
        # Pretend every other step verified a 2-token draft and kept its first token.
        drafts = len(tokens) // 3
        change = SpecCounters(drafts, 2 * drafts, drafts, [drafts], len(tokens) - drafts)
        return GenerationResult(tokens, result.stop_reason, counter_stats(change, len(tokens)))


ENTRY_POINTS = """
[specbench.methods]
fake-remote = engine_plugins:FakeRemoteMethod

[specbench.backends]
counting = engine_plugins:CountingBackend
"""
