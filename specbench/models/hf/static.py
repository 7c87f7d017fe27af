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

:class:`StaticSession` puts a decoder behind the ordinary :class:`~specbench.models.base.Session`
interface (rollback by common prefix, token trees), so every proposer and the execution core
run on it unchanged; a model keeps a pool of decoders (one per sequence in use at a time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from specbench.errors import ModelLoadError
from specbench.models.base import ForwardOutput, Session
from specbench.models.hf.architectures import lean_supported
from specbench.models.hf.lean import LeanForward

if TYPE_CHECKING:
    from specbench.models.hf.model import HFLanguageModel

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
        self._captured_step = self._step
        self.compiled = compile
        #: Without graphs or compilation, supported models run the lean forward: attention
        #: over the live slots only, fused packed projections.
        self._lean = None
        if not self.use_graphs and not compile and lean_supported(model.model):
            self._lean = LeanForward(model.model)
        if compile:
            # On a CPU, freezing lets inductor pack the weights for oneDNN itself (the packed
            # copies of PackedLinear are opaque to it; compiled, the layers read the dense
            # weights).
            freezing = self.device.type == "cpu"
            self._captured_step = torch.compile(
                self._step, dynamic=False, options={"freezing": freezing}
            )

    def _use_cache(self, size: int) -> None:
        if size not in self._caches:
            from specbench.models.hf.library import require_transformers

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
        with self.model.no_grad():
            self._pointers.fill_(0)

    def reserve(self, positions: int) -> None:
        """Start a new sequence that needs ``positions`` slots: without graphs or compiled
        steps, in the smallest power-of-two cache (at least 128) that holds them, up to
        ``max_len``. Graphs and compiled steps keep the one cache of ``max_len`` slots: a new
        size would capture or compile again, inside a timed sample."""
        size = self.max_len
        if not self.use_graphs and not self.compiled:
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
            # Inside inference mode, whichever mode the cache's tensors were made in.
            with self.model.no_grad():
                self._pointers.fill_(length)

    def forward(self, tokens: torch.Tensor, n_logits: int | None = None) -> torch.Tensor:
        """Append ``tokens`` (1-D, on the device) and return the logits ``[n, V]`` (float) of
        the last ``n_logits`` of them (all when ``None``)."""
        logits, _ = self.forward_states(tokens, n_logits)
        return logits

    def forward_states(
        self, tokens: torch.Tensor, n_logits: int | None = None, hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`, with the last layer's hidden states of the same rows when
        ``hidden`` (those calls run eagerly)."""
        m = tokens.numel()
        n = m if n_logits is None else n_logits
        self._check_room(m)
        with self.model.no_grad():
            self._start.fill_(self.length)
        states = None
        lean = self._lean_now()
        if lean is not None:
            positions = torch.arange(self.length, self.length + m, device=self.device)
            mask = None if m == 1 else self._allowed_mask(self._causal(m))
            logits, states = self._run_lean(lean, tokens, positions, mask, n, hidden)
        elif self.use_graphs and m in self.graph_lengths and n == m and not hidden:
            logits = self._graph(m).replay(tokens)[0]
        else:
            # Without graphs (a CPU) the compiled step, if any, still serves its lengths, so
            # the compiled path is testable anywhere; other lengths (prompts) stay eager.
            compiled = m in self.graph_lengths and n == m and not hidden
            step = self._captured_step if compiled else self._step
            with self.model.no_grad():
                if hidden:
                    out = self._forward(tokens.view(1, m), self._start, n, hidden=True)
                    logits = out.logits[0, :, : self.model.vocab_size].float()
                    states = out.hidden_states[-1][0, -n:].float()
                else:
                    logits = step(tokens.view(1, m), self._start, n)[0]
        self.length += m
        self._count(m)
        return logits, states

    def forward_tree(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tail: int,
        visible: torch.Tensor,
        n_logits: int | None = None,
    ) -> torch.Tensor:
        """Append ``tokens`` at ``positions``; query ``i`` sees every cached slot before
        ``tail`` and, of the slots from ``tail`` on (earlier tree nodes, then the new rows),
        those ``visible[i]`` marks. Returns the logits ``[n, V]`` of the last ``n_logits``
        rows (all by default); runs eagerly (tree shapes vary)."""
        m = tokens.numel()
        n = m if n_logits is None else n_logits
        self._check_room(m)
        if tail + visible.shape[1] != self.length + m:
            raise ValueError("the tree mask must cover every slot from tail to the new rows")
        lean = self._lean_now()
        if lean is not None:
            seen_live = torch.ones(m, self.length + m, dtype=torch.bool)
            seen_live[:, tail:] = visible
            mask = self._allowed_mask(seen_live)
            scored, _ = self._run_lean(lean, tokens, positions.to(self.device), mask, n, False)
            self.length += m
            self._count(m)
            return scored
        seen = torch.zeros(m, self.cache_len, dtype=torch.bool)
        seen[:, :tail] = True
        seen[:, tail : self.length + m] = visible
        mask = torch.zeros(m, self.cache_len, dtype=self.dtype)
        mask = mask.masked_fill(~seen, torch.finfo(self.dtype).min)
        with self.model.no_grad():
            out = self.model.model(
                input_ids=tokens.view(1, m),
                position_ids=positions.view(1, m).to(self.device),
                attention_mask=mask.view(1, 1, m, self.cache_len).to(self.device),
                **{self.model.cache_argument: self.cache},
                use_cache=True,
            )
        self.length += m
        self._count(m)
        logits: torch.Tensor = out.logits[0, -n:, : self.model.vocab_size].float()
        return logits

    def keep(self, base: int, rows: list[int]) -> None:
        """Keep the cached positions before ``base``, then the entries of ``base + r`` for
        each of ``rows`` in order (a tree's accepted path); drop everything after."""
        with self.model.no_grad():
            if rows and rows != list(range(len(rows))):
                source = torch.tensor([base + r for r in rows], device=self.device)
                target = torch.arange(base, base + len(rows), device=self.device)
                for layer in self.cache.layers:
                    for name in ("keys", "values"):
                        tensor = getattr(layer, name)
                        tensor.index_copy_(2, target, tensor.index_select(2, source))
            self.length = base + len(rows)
            self._pointers.fill_(self.length)

    def _lean_now(self) -> LeanForward | None:
        """The lean forward, unless someone hooks a decoder layer (then transformers')."""
        lean = self._lean
        return None if lean is None or lean.hooked() else lean

    def _causal(self, m: int) -> torch.Tensor:
        """New row ``i`` sees the cached slots and new rows ``0 .. i``: ``[m, length + m]``."""
        allowed = torch.ones(m, self.length + m, dtype=torch.bool)
        allowed[:, self.length :] = torch.ones(m, m, dtype=torch.bool).tril()
        return allowed

    def _allowed_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """The additive ``[1, 1, m, slots]`` mask of a boolean ``[m, slots]`` one."""
        mask = torch.zeros(allowed.shape, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask.view(1, 1, *allowed.shape).to(self.device)

    def _run_lean(
        self,
        lean: LeanForward,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        n_logits: int,
        hidden: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One lean forward writing at ``length``; the pointers follow, so transformers'
        forward (a hooked call) finds the cache where the lean one left it."""
        layers = self.cache.layers
        if not all(getattr(layer, "is_initialized", False) for layer in layers):
            self._initialise_layers()
        with self.model.no_grad():
            logits, states = lean(
                tokens.view(-1),
                positions,
                [layer.keys for layer in layers],
                [layer.values for layer in layers],
                self.length,
                mask,
                n_logits,
                hidden,
            )
            self._pointers.fill_(self.length + tokens.numel())
        return logits[:, : self.model.vocab_size].float(), states

    def _initialise_layers(self) -> None:
        """Allocate the static cache's buffers (transformers does it on its first forward)."""
        config = self.model.model.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        sample = torch.zeros(1, heads, 1, dim, dtype=self.dtype, device=self.device)
        with self.model.no_grad():
            for layer in self.cache.layers:
                if not getattr(layer, "is_initialized", False):
                    layer.lazy_initialization(sample, sample)
            self._pointers.fill_(self.length)

    def _check_room(self, m: int) -> None:
        if self.length + m > self.cache_len:
            raise ValueError(
                f"the static cache holds {self.cache_len} positions and this call needs "
                f"{self.length + m}; raise static_max_len"
            )

    def _count(self, m: int) -> None:
        self.model.counters.forward_calls += 1
        self.model.counters.tokens_processed += m

    def _mask(self, positions: torch.Tensor, m: int) -> torch.Tensor:
        """Additive mask [1, 1, m, size]: query i sees the slots up to its own position."""
        size = self.cache_len
        hidden = self.slots.view(1, -1) > positions.view(-1, 1)
        mask = torch.zeros(m, size, dtype=self.dtype, device=self.device)
        return mask.masked_fill(hidden, torch.finfo(self.dtype).min).view(1, 1, m, size)

    def _forward(
        self, ids: torch.Tensor, start: torch.Tensor, n_logits: int, hidden: bool = False
    ) -> Any:
        """One forward of ``ids`` ``[1, m]`` written from position ``start`` (a 0-d tensor),
        keeping the logits of the last ``n_logits`` rows (0: all)."""
        m = ids.shape[1]
        positions = (start + self.slots[:m]).view(1, m)
        return self.model.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=self._mask(positions, m),
            **{self.model.cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=n_logits,
            output_hidden_states=hidden,
        )

    def _step(self, ids: torch.Tensor, start: torch.Tensor, n_logits: int = 0) -> torch.Tensor:
        """The logits of :meth:`_forward`: what a captured or compiled step returns."""
        logits: torch.Tensor = self._forward(ids, start, n_logits).logits
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
                step(self.ids, decoder._start, m)
                decoder._pointers.fill_(length)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), decoder.model.no_grad():
            self.logits = step(self.ids, decoder._start, m)
        decoder._pointers.fill_(length)

    def replay(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(tokens.view(self.ids.shape))
        self.graph.replay()
        logits: torch.Tensor = self.logits
        return logits


class StaticSession(Session):
    """The :class:`~specbench.models.base.Session` interface over a :class:`StaticDecoder`:
    rollback moves the write pointer, token trees are scored with an explicit mask and the
    accepted path is moved into place. ``close`` hands the decoder back to ``pool``."""

    def __init__(
        self, model: HFLanguageModel, decoder: StaticDecoder, pool: list[StaticDecoder]
    ) -> None:
        super().__init__(model)
        self.decoder = decoder
        self._pool = pool

    @property
    def engine(self) -> str:
        """``"compiled"``, ``"graphs"`` (CUDA graphs may replay its steps) or ``"static"``
        (the lean forward on a CPU, else transformers' forward over the static cache)."""
        decoder = self.decoder
        if decoder.compiled:
            return "compiled"
        if decoder.use_graphs and decoder.graph_lengths:
            return "graphs"
        return "static"

    def _append(self, tokens: list[int], n_logits: int, hidden: bool) -> ForwardOutput:
        ids = torch.tensor(tokens, dtype=torch.long, device=self.decoder.device)
        logits, states = self.decoder.forward_states(ids, n_logits, hidden)
        return ForwardOutput(logits, states)

    def _truncate(self, length: int) -> None:
        self.decoder.rollback(length)

    def _append_tree(
        self, chain: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> torch.Tensor:
        if not chain and not tokens:
            return torch.empty(0, self.model.vocab_size)
        # One call for the chain and the tree.
        visible, positions = self._tree_layout(chain, parents, tokens, depths)
        ids = torch.tensor(chain + tokens, dtype=torch.long, device=self.decoder.device)
        keep = len(tokens) + (1 if chain else 0)
        return self.decoder.forward_tree(
            ids, torch.tensor(positions), len(self.cached), visible, n_logits=keep
        )

    def _keep_tree_nodes(self, nodes: list[int]) -> None:
        self.decoder.keep(len(self.cached), nodes)

    def close(self) -> None:
        if self.decoder not in self._pool:
            self._pool.append(self.decoder)
