"""Suffix Decoding (Oliaro et al., NeurIPS 2025; vLLM ``method = "suffix"``): draft trees from
suffix tries of the prompt, the output so far and earlier outputs of the run."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.suffix import SuffixProposer
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, MethodParams, ModelRole


class SuffixParams(ExecutionParams):
    max_depth: int = Field(
        24, ge=2, le=256, description="Longest token window a trie holds (match + speculation)."
    )
    max_match: int = Field(
        12, ge=1, le=255, description="Longest suffix matched (leaves depth to speculate)."
    )
    max_spec_factor: float = Field(
        1.0, ge=0, description="Speculate up to max_spec_factor * match length + offset tokens."
    )
    max_spec_offset: float = Field(0.0, description="See max_spec_factor.")
    min_token_prob: float = Field(
        0.1, ge=0, le=1, description="Keep tree nodes whose estimated probability is at least this."
    )
    max_spec_tokens: int = Field(32, ge=1, le=1024, description="Tree nodes per step at most.")
    max_cached_requests: int = Field(
        256, ge=0, description="Earlier outputs the global trie keeps (0: per-request only)."
    )


class SuffixMethod(InProcessMethod[SuffixParams]):
    """Suffix Decoding: no draft model; the tree walk verifies exactly.

    Records add ``suffix_match_rate`` (steps with a match), ``suffix_match_length``,
    ``suffix_tree_size``, ``suffix_global_hit_rate`` (steps whose tree came from the global
    trie) and ``suffix_global_nodes``.
    """

    name = "suffix"
    description = "Suffix Decoding: trees from suffix tries of prompt, output and earlier outputs."
    needs = frozenset({ModelRole.TARGET})
    Params = SuffixParams

    def __init__(self, params: SuffixParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.suffix = suffix_proposer(params)
        self.proposer = self.suffix

    def end_warmup(self) -> None:
        self.suffix.clear_global()

    @classmethod
    def replay_proposer(cls, params: MethodParams) -> SuffixProposer:
        assert isinstance(params, SuffixParams)  # replay hands over validated Params
        return suffix_proposer(params)


def suffix_proposer(params: SuffixParams) -> SuffixProposer:
    """The proposer a run of ``suffix`` uses (``specbench replay`` builds the same)."""
    return SuffixProposer(
        max_depth=params.max_depth,
        max_match=params.max_match,
        max_spec_factor=params.max_spec_factor,
        max_spec_offset=params.max_spec_offset,
        min_token_prob=params.min_token_prob,
        max_spec_tokens=params.max_spec_tokens,
        max_cached_requests=params.max_cached_requests,
        use_global=params.max_cached_requests > 0,
    )
