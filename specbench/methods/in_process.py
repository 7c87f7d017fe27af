"""The base of every method that runs on specbench's own execution core.

A method supplies a proposer (how it drafts), a verifier (how drafts are judged) and its
parameters; :class:`InProcessMethod` runs them through :func:`specbench.decoding.core.decode`
with the engine and batch size its :class:`ExecutionParams` give. No method chooses a loop
or an executor: a new drafter gets the static engine, CUDA graphs and batching for free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from typing_extensions import TypeVar

from specbench.cpu_pinning import torch_threads
from specbench.decoding.core import decode
from specbench.decoding.execution import Execution
from specbench.decoding.proposers import NoProposer, Proposer
from specbench.decoding.types import GenerationRequest, GenerationResult
from specbench.decoding.verify import RejectionVerifier, Verifier
from specbench.plugins import DecodingMethod, MethodModels, MethodParams


class ExecutionParams(MethodParams):
    """The fields every in-process method has: how its models run."""

    engine: Literal["eager", "static"] = Field(
        "eager",
        description="static: preallocated KV cache, CUDA graphs on a GPU (one sequence at a "
        "time); eager: the backend's own cache.",
    )
    static_max_len: int = Field(4096, ge=16, description="Positions in the static cache.")
    cuda_graphs: bool = Field(True, description="Capture fixed-length steps (static, CUDA).")
    compile: bool = Field(
        False,
        description="torch.compile the static engine's fixed-length steps: fewer, fused "
        "kernels; a minute or more to start, and one cache of static_max_len slots.",
    )
    batch_size: int = Field(1, ge=1, le=256, description="Prompts decoded together.")
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads while this method decodes (unset: the process's own); "
        "restored afterwards, so methods of one run can compare thread counts.",
    )

    @model_validator(mode="after")
    def _one_static_sequence(self) -> ExecutionParams:
        if self.engine == "static" and self.batch_size > 1:
            raise ValueError(
                "engine 'static' decodes one sequence at a time: set batch_size = 1 or "
                "engine = 'eager'"
            )
        if self.compile and self.engine != "static":
            raise ValueError(
                "compile needs engine = 'static' (it compiles the static engine's steps): "
                "set engine = 'static' or compile = false"
            )
        return self

    def execution(self) -> Execution:
        return Execution(self.engine, self.static_max_len, self.cuda_graphs, self.compile)


class OneSequenceParams(ExecutionParams):
    """For methods whose proposer reads the target through model hooks (trained heads):
    one sequence at a time."""

    batch_size: int = Field(
        1, ge=1, le=1, description="Always 1: the heads read one sequence's target features."
    )


#: An in-process method's parameter class (``InProcessMethod[E]``).
E = TypeVar("E", bound=ExecutionParams, default=ExecutionParams)


class InProcessMethod(DecodingMethod[E]):
    """A method on the execution core: set ``self.proposer`` and ``self.verifier`` (defaults:
    plain decoding with the exact rejection verifier) and the core does the rest.

    Override :meth:`decode` to wrap the core (model hooks a proposer needs), and
    :meth:`finish` to add method-level numbers to the results.
    """

    Params = ExecutionParams

    def __init__(self, params: E, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer: Proposer = NoProposer()
        self.verifier: Verifier = RejectionVerifier()

    def execution(self) -> Execution:
        params: MethodParams = self.params  # a plugin's Params may lack the execution fields
        return params.execution() if isinstance(params, ExecutionParams) else Execution()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        threads = getattr(self.params, "threads", None)
        with torch_threads(threads):
            results = self.decode(requests)
        self.finish(results)
        return results

    def decode(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """The core's decoding of ``requests`` with this method's proposer and verifier."""
        return decode(requests, self.models.target, self.proposer, self.verifier, self.execution())

    def finish(self, results: list[GenerationResult]) -> None:
        """Add method-level numbers to fresh results; the default adds nothing."""
