"""Capabilities a model may offer beyond sessions, as protocols.

Methods and heads ask a model for a capability (``internal_states(model, "eagle3")``)
instead of reaching into a backend's internals. The HF backend (``hf`` and ``dummy``) offers
both below; a third-party backend offers one by implementing its methods, and every method
that needs it then works on that backend too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import torch

from specbench.errors import PluginError


class StateCapture(Protocol):
    """While active (a context manager), records states of every forward call of the model.

    ``states`` holds the last call's ``[batch, positions, width]`` (or the first call's, when
    asked for); ``take()`` returns batch row 0 of it and forgets it."""

    states: torch.Tensor | None

    def __enter__(self) -> StateCapture: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None: ...

    def take(self) -> torch.Tensor | None: ...


@dataclass(frozen=True)
class Architecture:
    """The shapes a head built for a model must match."""

    hidden_size: int
    vocab_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    #: The model classes its config names (``Qwen2ForCausalLM``), written into saved heads.
    class_names: tuple[str, ...] = ()


@dataclass
class GeneratedStates:
    """A batched greedy generation with every layer's states: ``sequences`` ``[B, width +
    new]`` (left-padded prompts first), ``hidden_states[step][layer]`` ``[B, T, H]`` (step 0 is
    the prefill, its layer 0 the embeddings, its last layer the final norm's output)."""

    sequences: torch.Tensor
    hidden_states: Any


@runtime_checkable
class InternalStates(Protocol):
    """A model whose internal states can be read: what EAGLE-3 and Medusa heads draft from,
    what their training collects, and what AutoJudge's label mining records."""

    def architecture(self) -> Architecture:
        """Its shapes (hidden size, layers, heads, rope)."""
        ...

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype of its weights (heads run in it)."""
        ...

    def capture_layer_inputs(self, layer_ids: Sequence[int]) -> StateCapture:
        """Records the inputs of decoder layers ``layer_ids``, concatenated in that order."""
        ...

    def final_states_readable(self) -> bool:
        """Whether :meth:`capture_final_states` works (the model has a final norm)."""
        ...

    def capture_final_states(self, first_call: bool = False) -> StateCapture:
        """Records the final normed states (what the output layer reads); with
        ``first_call``, only the first call's (a batch's prefill)."""
        ...

    def input_embeddings(self) -> torch.nn.Module:
        """The token embedding table (an EAGLE-3 head without its own reads it)."""
        ...

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight ``[vocab, hidden]`` (heads start from it)."""
        ...

    def final_norm_weight(self) -> torch.Tensor | None:
        """The final norm's weight ``[hidden]``, or ``None`` (no final norm, another shape)."""
        ...

    def logits_of_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw logits ``[..., V]`` (float, CPU) of final normed states."""
        ...

    def forward_uncached(self, ids: torch.Tensor) -> None:
        """One forward over ``ids`` ``[1, n]`` outside any session, for the captures."""
        ...

    def generate_greedy_with_states(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        pad_id: int | None = None,
    ) -> GeneratedStates:
        """Greedy continuations of left-padded ``ids`` with every layer's states; the pad id
        is the tokenizer's unless given (else the first stop id)."""
        ...


@runtime_checkable
class TransformersModel(Protocol):
    """A model that is a transformers model underneath: ``hf-generate`` times transformers'
    own ``generate`` on it, the reference specbench's loop is measured against."""

    def transformers_module(self) -> torch.nn.Module:
        """The ``PreTrainedModel`` itself."""
        ...


def internal_states(model: object, who: str) -> InternalStates:
    """``model``'s :class:`InternalStates`, or a one-line error saying ``who`` needs them."""
    if isinstance(model, InternalStates):
        return model
    raise _missing(model, InternalStates, "the target's internal states", who)


def transformers_model(model: object, who: str) -> TransformersModel:
    """``model`` as a :class:`TransformersModel`, or a one-line error saying ``who`` needs it."""
    if isinstance(model, TransformersModel):
        return model
    raise _missing(model, TransformersModel, "a transformers model", who)


def _missing(model: object, capability: type, what: str, who: str) -> PluginError:
    name = getattr(model, "name", type(model).__name__)
    return PluginError(
        f"{who} needs {what}, which the model {name} does not offer",
        "use backend = 'hf' (or 'dummy') for it, or a backend that implements "
        f"specbench.models.capabilities.{capability.__name__}",
    )
