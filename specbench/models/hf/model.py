"""A transformers causal LM behind specbench's :class:`~specbench.models.base.LanguageModel`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from specbench.models.base import (
    BatchSession,
    Continuation,
    LanguageModel,
    Session,
)
from specbench.models.hf.session import HFBatchSession, HFSession, cache_argument
from specbench.models.hf.tokenizer import HFTokenizer


class HFLanguageModel(LanguageModel):
    """A loaded transformers causal LM behind specbench's session interface."""

    tokenizer: HFTokenizer

    def __init__(
        self,
        model: Any,
        tokenizer: HFTokenizer,
        name: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.info = info or {}
        self.prompt_caches: dict[tuple[int, ...], Any] = {}
        #: Free static decoders by (max_len, compile): one is in use per open static session.
        self._static_pools: dict[tuple[int, bool], list[Any]] = {}
        #: The forward's cache argument: ``cache`` since transformers 5.2x, before that
        #: ``past_key_values`` (the old name warns on every call where both exist).
        self.cache_argument = cache_argument(model)
        # optimum-quanto's packed int4 weights cannot run under inference_mode.
        quantized = (self.info.get("quantization") or {}).get("method")
        self.no_grad = torch.no_grad if quantized == "quanto" else torch.inference_mode

    def restrict_vocab(self, size: int) -> None:
        """Return logits for the first ``size`` ids only (padded embedding rows are masked)."""
        self.vocab_size = min(self.vocab_size, size)

    def new_session(self) -> Session:
        return HFSession(self)

    @contextlib.contextmanager
    def shipped_kernels(self) -> Iterator[None]:
        """transformers' own ``nn.Linear`` layers and the attention it would have chosen
        (``info["shipped_attention"]``) inside the block; specbench's back after it. The
        swap changes classes in place: no weight is copied."""
        swapped = [
            (module, type(module))
            for module in self.model.modules()
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear
        ]
        attention = getattr(self.model.config, "_attn_implementation", None)
        shipped = self.info.get("shipped_attention") or attention
        for module, _ in swapped:
            module.__class__ = torch.nn.Linear
        if shipped != attention:
            self.model.set_attn_implementation(shipped)
        try:
            yield
        finally:
            for module, kind in swapped:
                module.__class__ = kind
            if shipped != attention:
                self.model.set_attn_implementation(attention)

    def new_static_session(
        self,
        positions: int,
        max_len: int,
        graph_lengths: tuple[int, ...] = (),
        compile: bool = False,
    ) -> Session:
        """A session in one of this model's static decoders (made once per setting and kept:
        a cache, its graphs and any compilation are made once per run, not per sequence)."""
        from specbench.models.hf.static import StaticDecoder, StaticSession

        pool = self._static_pools.setdefault((max_len, compile), [])
        decoder = pool.pop() if pool else StaticDecoder(self, max_len, compile=compile)
        decoder.graph_lengths.update(graph_lengths)
        decoder.reserve(positions)
        return StaticSession(self, decoder, pool)

    def logits_of_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw logits ``[..., V]`` (float, on the CPU) for final normed hidden states."""
        head = self.model.get_output_embeddings()
        with self.no_grad():
            rows = states.reshape(-1, 1, states.shape[-1])  # [N, 1, H]: the layer's usual shape
            logits: torch.Tensor = head(rows.to(head.weight.device, head.weight.dtype))
        return logits[:, 0, : self.vocab_size].float().cpu().reshape(*states.shape[:-1], -1)

    def new_batch_session(self, size: int) -> BatchSession:
        return HFBatchSession(self, size)

    def greedy_continuations(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: frozenset[int],
        batch_size: int = 8,
    ) -> list[Continuation]:
        """Batched greedy continuations (left padding), the way label mining stays affordable."""
        pad = self.tokenizer.hf.pad_token_id
        if pad is None:
            pad = next(iter(stop_ids), 0)
        out: list[Continuation] = []
        for start in range(0, len(prefixes), batch_size):
            batch = [list(p) for p in prefixes[start : start + batch_size]]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prefix in enumerate(batch):
                ids[row, width - len(prefix) :] = torch.tensor(prefix)
                mask[row, width - len(prefix) :] = 1
            with self.no_grad():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(stop_ids) or None,
                    pad_token_id=pad,
                    output_hidden_states=True,
                    return_dict_in_generate=True,
                )
            # The last layer's states are the final norm's output, what the output layer
            # reads: the state before the last prefix token gives the logits it came from.
            prefill = generated.hidden_states[0][-1]
            prefill_hidden = prefill[:, -1].float().cpu()
            before_last = self.logits_of_states(prefill[:, -2]) if width > 1 else None
            new = generated.sequences[:, width:].cpu()
            for row in range(len(batch)):
                tokens: list[int] = []
                for token in new[row].tolist():
                    tokens.append(token)
                    if token in stop_ids:
                        break
                out.append(
                    Continuation(
                        tokens,
                        prefill_hidden[row],
                        None if before_last is None or len(batch[row]) < 2 else before_last[row],
                    )
                )
        return out

    def describe(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.model.parameters())
        return {
            **super().describe(),
            "backend": "hf",
            "architecture": type(self.model).__name__,
            "parameters": parameters,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            **self.info,
        }
