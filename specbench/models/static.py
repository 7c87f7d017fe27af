"""A preallocated KV cache for one sequence, with CUDA graphs for fixed-length steps.

Host overhead, not arithmetic, bounds single-sequence decoding on a GPU: an 8B model's eager
forward costs several times its weight-streaming time. :class:`StaticDecoder` keeps the KV
cache at a fixed address (transformers' ``StaticCache``) and builds the attention mask
itself, so a forward of ``m`` tokens is a fixed sequence of kernels that a CUDA graph can
capture once and replay for every later step and prompt. Rolling back after a rejection only
moves the write pointer; stale entries beyond it are masked out.

On a CPU (or with ``graphs=False``) the same code runs eagerly, which is how tests check that
it gives exactly the tokens of the ordinary dynamic-cache path.
"""

from __future__ import annotations

from typing import Any

import torch

from specbench.errors import ModelLoadError
from specbench.models.hf import HFLanguageModel, require_transformers


class StaticDecoder:
    """One sequence in a static cache of ``max_len`` positions (see module docstring)."""

    def __init__(
        self, model: HFLanguageModel, max_len: int, graph_lengths: tuple[int, ...] = ()
    ) -> None:
        transformers = require_transformers()
        self.model = model
        self.max_len = max_len
        self.device = model.device
        self.dtype = model.model.dtype
        self.cache = transformers.StaticCache(config=model.model.config, max_cache_len=max_len)
        self.length = 0
        self.slots = torch.arange(max_len, device=self.device)
        self.use_graphs = self.device.type == "cuda" and bool(graph_lengths)
        self.graph_lengths = set(graph_lengths)
        self._graphs: dict[int, _CapturedStep] = {}

    def reset(self) -> None:
        """Start a new sequence (the cache memory and any captured graphs are reused)."""
        self.rollback(0)

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        self.length = length
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                counter = getattr(layer, "cumulative_length", None)
                if counter is None:
                    raise ModelLoadError(
                        "this transformers version's StaticCache has no write pointer",
                        "use transformers >= 5.0 for the static engine, or engine = 'eager'",
                    )
                counter.fill_(length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (1-D, on the device) and return their logits ``[m, V]`` (float)."""
        m = tokens.numel()
        if self.length + m > self.max_len:
            raise ValueError(
                f"the static cache holds {self.max_len} positions; raise static_max_len"
            )
        start = self.length
        if self.use_graphs and m in self.graph_lengths:
            logits = self._graph(m).replay(tokens, start, self._mask(start, m))
        else:
            logits = self._eager(tokens.view(1, m), self._positions(start, m), self._mask(start, m))
        self.length += m
        self.model.counters.forward_calls += 1
        self.model.counters.tokens_processed += m
        return logits[0, :, : self.model.vocab_size].float()

    def _positions(self, start: int, m: int) -> torch.Tensor:
        return (start + torch.arange(m, device=self.device)).view(1, m)

    def _mask(self, start: int, m: int) -> torch.Tensor:
        """Additive mask ``[1, 1, m, max_len]``: query ``i`` sees slots ``<= start + i``."""
        positions = start + torch.arange(m, device=self.device)
        hidden = self.slots.view(1, -1) > positions.view(-1, 1)
        mask = torch.zeros(m, self.max_len, dtype=self.dtype, device=self.device)
        return mask.masked_fill(hidden, torch.finfo(self.dtype).min).view(1, 1, m, self.max_len)

    def _eager(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        with self.model.no_grad():
            return self.model.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=mask,
                past_key_values=self.cache,
                use_cache=True,
            ).logits

    def _graph(self, m: int) -> _CapturedStep:
        if m not in self._graphs:
            self._graphs[m] = _CapturedStep(self, m)
        return self._graphs[m]


class _CapturedStep:
    """A CUDA graph of one ``m``-token forward, with static input and output buffers."""

    def __init__(self, decoder: StaticDecoder, m: int) -> None:
        device = decoder.device
        self.decoder = decoder
        self.ids = torch.zeros(1, m, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, m, dtype=torch.long, device=device)
        self.mask = torch.zeros(1, 1, m, decoder.max_len, dtype=decoder.dtype, device=device)
        length = decoder.length
        # Warm up on a side stream (allocations, lazy init), then capture; both write into
        # the cache at the current pointer, which is restored afterwards.
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                decoder._eager(self.ids, self.positions, self.mask)
                decoder.rollback(length)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder._eager(self.ids, self.positions, self.mask)
        decoder.rollback(length)

    def replay(self, tokens: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(tokens.view(self.ids.shape))
        self.positions.copy_(self.decoder._positions(start, self.ids.shape[1]))
        self.mask.copy_(mask)
        self.graph.replay()
        logits: torch.Tensor = self.logits
        return logits
