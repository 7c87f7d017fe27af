"""A preallocated KV cache for one sequence, with CUDA graphs for fixed-length steps.

Host overhead, not arithmetic, bounds single-sequence decoding on a GPU: an 8B model's eager
forward costs several times its weight-streaming time. :class:`StaticDecoder` keeps the KV
cache at a fixed address (transformers' ``StaticCache``) and builds the attention mask
itself, so a forward of ``m`` tokens is a fixed sequence of kernels that a CUDA graph can
capture once and replay for every later step and prompt. Rolling back after a rejection only
moves the write pointer; stale entries beyond it are masked out.

Inside a captured step everything that depends on the position (position ids, the mask) is
computed on the device from one scalar, so a replay costs two small copies and no Python work
per layer. ``compile=True`` runs the captured steps through ``torch.compile`` first, which
fuses an eager decoder layer's few dozen small kernels (norms, rotary, activations) into a
handful: at batch one those kernels, not the weight reads, are most of a step's time.

On a CPU (or with no graph lengths) the same code runs eagerly, which is how tests check that
it gives exactly the tokens of the ordinary dynamic-cache path.
"""

from __future__ import annotations

import torch

from specbench.decoding import ledger
from specbench.errors import ModelLoadError
from specbench.models.hf import HFLanguageModel, require_transformers

MIN_CACHE = 128


class StaticDecoder:
    """One sequence in a static cache of ``max_len`` positions (see module docstring)."""

    def __init__(
        self,
        model: HFLanguageModel,
        max_len: int,
        graph_lengths: tuple[int, ...] = (),
        compile: bool = False,
    ) -> None:
        self.model = model
        self.max_len = max_len
        self.device = model.device
        self.dtype = model.model.dtype
        self.length = 0
        self._start = torch.zeros((), dtype=torch.long, device=self.device)
        self.use_graphs = self.device.type == "cuda"
        #: Caches by size. Attention reads every slot of the cache (stale ones masked), so a
        #: step's cost grows with its size: without graphs, each sequence takes the smallest
        #: power-of-two cache it fits in (:meth:`reserve`); graphs keep one fixed buffer.
        self._caches: dict[int, tuple[object, torch.Tensor, torch.Tensor]] = {}
        self._use_cache(max_len)
        self.graph_lengths = set(graph_lengths)
        self._graphs: dict[int, _CapturedStep] = {}
        self._captured_step = torch.compile(self._step, dynamic=False) if compile else self._step

    def _use_cache(self, size: int) -> None:
        if size not in self._caches:
            transformers = require_transformers()
            self.cache = transformers.StaticCache(
                config=self.model.model.config, max_cache_len=size
            )
            slots = torch.arange(size, device=self.device)
            self._caches[size] = (self.cache, slots, self._share_write_pointers())
        cache, self.slots, self._pointers = self._caches[size]
        self.cache = cache
        self.cache_len = size
        self.length = 0
        self._pointers.fill_(0)

    def reserve(self, positions: int) -> None:
        """Start a new sequence that needs ``positions`` slots: without graphs, in the
        smallest power-of-two cache (at least 128) that holds them, up to ``max_len``."""
        size = self.max_len
        if not self.use_graphs:
            size = min(self.max_len, max(MIN_CACHE, 1 << max(0, positions - 1).bit_length()))
        if size != self.cache_len:
            self._use_cache(size)
        self.reset()

    def _share_write_pointers(self) -> torch.Tensor:
        """Point every layer's write pointer into one tensor, so a rollback is one fill."""
        pointers = torch.zeros(len(self.cache.layers), dtype=torch.long, device=self.device)
        for i, layer in enumerate(self.cache.layers):
            if getattr(layer, "is_sliding", False) or not hasattr(layer, "cumulative_length"):
                raise ModelLoadError(
                    f"the static engine cannot roll back {type(layer).__name__} cache layers "
                    "(sliding-window, or a transformers version without a write pointer)",
                    "use engine = 'eager' for this model, or transformers >= 5.0",
                )
            # A 0-d view: the layer's in-place ``add_`` writes through to ``pointers``, and its
            # lazy init keeps it (``.to`` of a tensor already on the device is a no-op).
            layer.cumulative_length = pointers[i]
        return pointers

    def reset(self) -> None:
        """Start a new sequence (the cache memory and any captured graphs are reused)."""
        self.rollback(0)

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        if length != self.length:
            self.length = length
            self._pointers.fill_(length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (1-D, on the device) and return their logits ``[m, V]`` (float)."""
        m = tokens.numel()
        if self.length + m > self.cache_len:
            raise ValueError(
                f"the static cache holds {self.max_len} positions; raise static_max_len"
            )
        self._start.fill_(self.length)
        if self.use_graphs and m in self.graph_lengths:
            with ledger.forward(self.model, m):
                logits = self._graph(m).replay(tokens)
        else:
            # Without graphs (a CPU) the compiled step, if any, still serves its lengths, so
            # the compiled path is testable anywhere; other lengths (prompts) stay eager.
            step = self._captured_step if m in self.graph_lengths else self._step
            with self.model.no_grad(), ledger.forward(self.model, m):
                logits = step(tokens.view(1, m), self._start)
        self.length += m
        self.model.counters.forward_calls += 1
        self.model.counters.tokens_processed += m
        return logits[0]

    def _step(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """One forward of ``ids`` ``[1, m]`` written from position ``start`` (a 0-d tensor)."""
        m = ids.shape[1]
        positions = (start + self.slots[:m]).view(1, m)
        # Additive mask [1, 1, m, size]: query i sees the slots up to its own position.
        size = self.cache_len
        hidden = self.slots.view(1, -1) > positions.view(-1, 1)
        mask = torch.zeros(m, size, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(hidden, torch.finfo(self.dtype).min).view(1, 1, m, size)
        logits: torch.Tensor = self.model.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
        ).logits
        return logits[:, :, : self.model.vocab_size].float()

    def _graph(self, m: int) -> _CapturedStep:
        if m not in self._graphs:
            self._graphs[m] = _CapturedStep(self, m)
        return self._graphs[m]


class _CapturedStep:
    """A CUDA graph of one ``m``-token forward, with a static input and output buffer."""

    def __init__(self, decoder: StaticDecoder, m: int) -> None:
        device = decoder.device
        self.ids = torch.zeros(1, m, dtype=torch.long, device=device)
        length = decoder.length
        step = decoder._captured_step
        # Warm up on a side stream (allocations, lazy init, compilation), then capture; both
        # write into the cache at the current pointer, which is restored afterwards.
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), decoder.model.no_grad():
            for _ in range(3):
                step(self.ids, decoder._start)
                decoder._pointers.fill_(length)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), decoder.model.no_grad():
            self.logits = step(self.ids, decoder._start)
        decoder._pointers.fill_(length)

    def replay(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(tokens.view(self.ids.shape))
        self.graph.replay()
        logits: torch.Tensor = self.logits
        return logits
