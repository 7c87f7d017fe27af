"""Reading a transformers model's internal states from the calls it makes anyway.

A trained head (EAGLE-3) reads the inputs of a few target layers at every position the
target processes. Forward pre-hooks on those layers record them during the verification
call itself, so no position is run through the target twice. Medusa and AutoJudge's mining
read the final norm's output the same way. This is how the HF model implements
:class:`~specbench.models.capabilities.InternalStates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn


def decoder_layers(module: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.layers`` in most)."""
    for holder in (getattr(module, "model", None), module):
        layers = getattr(holder, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    get_decoder = getattr(module, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    raise ValueError(f"{type(module).__name__} has no decoder layers to read features from")


class LayerInputCapture:
    """While active, records the input hidden states of ``layer_ids`` at every forward call.

    ``take()`` returns the last call's states concatenated in ``layer_ids`` order,
    ``[positions, len(layer_ids) * H]`` (batch row 0), and forgets them.
    """

    def __init__(self, module: nn.Module, layer_ids: Sequence[int]) -> None:
        self.layers = decoder_layers(module)
        self.layer_ids = tuple(layer_ids)
        self._parts: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerInputCapture:
        self._parts = {}
        for layer_id in self.layer_ids:
            hook = self._hook(layer_id)
            self._handles.append(
                self.layers[layer_id].register_forward_pre_hook(hook, with_kwargs=True)
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._parts = {}

    def _hook(self, layer_id: int) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            if layer_id == min(self.layer_ids):
                self._parts = {}  # a new forward call starts
            self._parts[layer_id] = hidden[0].detach()

        return record

    def take(self) -> torch.Tensor | None:
        if len(self._parts) != len(set(self.layer_ids)):
            return None
        out = torch.cat([self._parts[i] for i in self.layer_ids], dim=-1)
        self._parts = {}
        return out


def final_norm(module: Any) -> nn.Module | None:
    """A transformers causal LM's last norm (``model.norm`` in most), or ``None``."""
    norm = getattr(getattr(module, "model", module), "norm", None)
    return norm if isinstance(norm, nn.Module) else None


class FinalStateCapture:
    """While active, records the target's final normed hidden states (the output of its last
    norm, what the output layer reads): ``states`` holds the last call's ``[batch, positions,
    H]`` (with ``first_call``: the first call's, a batch's prefill), ``take()`` returns batch
    row 0 of it and forgets it. Medusa trees and AutoJudge mining read these."""

    def __init__(self, module: nn.Module, first_call: bool = False) -> None:
        norm = final_norm(module)
        if norm is None:
            raise ValueError(f"{type(module).__name__} has no final norm to read states from")
        self.norm = norm
        self.first_call = first_call
        self.states: torch.Tensor | None = None
        self._handle: Any = None

    def __enter__(self) -> FinalStateCapture:
        def record(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if self.first_call and self.states is not None:
                return
            self.states = (output[0] if isinstance(output, tuple) else output).detach()

        self._handle = self.norm.register_forward_hook(record)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None

    def take(self) -> torch.Tensor | None:
        out = None if self.states is None else self.states[0]
        self.states = None
        return out
