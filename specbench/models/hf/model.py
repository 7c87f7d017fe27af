"""A transformers causal LM behind specbench's :class:`~specbench.models.base.LanguageModel`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from specbench.models.base import BatchSession, LanguageModel, Session
from specbench.models.capabilities import Architecture, GeneratedStates
from specbench.models.hf.capture import (
    FinalStateCapture,
    LayerInputCapture,
    decoder_layers,
    final_norm,
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
        """transformers' own ``nn.Linear`` layers, norms and MLPs and the attention it would
        have chosen (``info["shipped_attention"]``) inside the block; specbench's back after
        it. The swap changes classes in place: no weight is copied."""
        from specbench.models.hf.fused_layers import own_class

        swapped: list[tuple[torch.nn.Module, type, type]] = []
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
                swapped.append((module, type(module), torch.nn.Linear))
            elif (own := own_class(module)) is not None:
                swapped.append((module, type(module), own))
        attention = getattr(self.model.config, "_attn_implementation", None)
        shipped = self.info.get("shipped_attention") or attention
        for module, _, shipped_class in swapped:
            module.__class__ = shipped_class
        if shipped != attention:
            self.model.set_attn_implementation(shipped)
        try:
            yield
        finally:
            for module, kind, _ in swapped:
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

    # ------------------------------------------------------------ capabilities: InternalStates

    def architecture(self) -> Architecture:
        config = self.model.config
        rope = getattr(config, "rope_parameters", None) or {}
        return Architecture(
            hidden_size=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            num_layers=len(decoder_layers(self.model)),
            num_attention_heads=int(config.num_attention_heads),
            num_key_value_heads=int(getattr(config, "num_key_value_heads", None) or 1),
            head_dim=getattr(config, "head_dim", None),
            rms_norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
            rope_theta=float(getattr(config, "rope_theta", None) or rope.get("rope_theta") or 1e4),
            max_position_embeddings=int(getattr(config, "max_position_embeddings", 32768)),
            class_names=tuple(getattr(config, "architectures", None) or ()),
        )

    @property
    def weights_dtype(self) -> torch.dtype:
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    def capture_layer_inputs(self, layer_ids: Sequence[int]) -> LayerInputCapture:
        return LayerInputCapture(self.model, layer_ids)

    def final_states_readable(self) -> bool:
        return final_norm(self.model) is not None

    def capture_final_states(self, first_call: bool = False) -> FinalStateCapture:
        return FinalStateCapture(self.model, first_call=first_call)

    def input_embeddings(self) -> torch.nn.Module:
        table: torch.nn.Module = self.model.get_input_embeddings()
        return table

    def output_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.model.get_output_embeddings().weight
        return weight

    def final_norm_weight(self) -> torch.Tensor | None:
        weight = getattr(final_norm(self.model), "weight", None)
        hidden = int(self.model.config.hidden_size)
        if not isinstance(weight, torch.Tensor) or weight.shape != (hidden,):
            return None
        return weight

    def forward_uncached(self, ids: torch.Tensor) -> None:
        with self.no_grad():
            self.model(input_ids=ids.to(self.device))

    def generate_greedy_with_states(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        pad_id: int | None = None,
    ) -> GeneratedStates:
        if pad_id is None:
            pad_id = self.tokenizer.hf.pad_token_id
        if pad_id is None:
            pad_id = next(iter(stop_ids), 0)
        with self.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids) or None,
                pad_token_id=pad_id,
                output_hidden_states=True,
                return_dict_in_generate=True,
            )
        return GeneratedStates(out.sequences, out.hidden_states)

    # --------------------------------------------------------- capabilities: TransformersModel

    def transformers_module(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model
        return module

    def logits_of_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw logits ``[..., V]`` (float, on the CPU) for final normed hidden states."""
        head = self.model.get_output_embeddings()
        with self.no_grad():
            rows = states.reshape(-1, 1, states.shape[-1])  # [N, 1, H]: the layer's usual shape
            logits: torch.Tensor = head(rows.to(head.weight.device, head.weight.dtype))
        return logits[:, 0, : self.vocab_size].float().cpu().reshape(*states.shape[:-1], -1)

    def new_batch_session(self, size: int) -> BatchSession:
        return HFBatchSession(self, size)

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
