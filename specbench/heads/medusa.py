"""Medusa-1 heads: residual blocks on the target's last hidden state, one head per future
position (Cai et al., 2024), in the hub layout the Medusa repository publishes.

A folder (or hub repository) holds ``config.json`` with ``medusa_num_heads`` and
``medusa_num_layers`` (and usually ``base_model_name_or_path``), and the heads' weights as
``medusa_lm_head.safetensors`` or ``medusa_lm_head.pt``: the state dict of a list of heads,
head ``i`` being ``medusa_num_layers`` residual blocks (``i.j.linear.weight/bias``: x + SiLU(Wx
+ b)) and a vocabulary projection without bias (``i.{layers}.weight``). Keys may carry a
``medusa_head.`` prefix (checkpoints saved with the base model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from specbench.errors import ModelLoadError
from specbench.heads.hub import read_state, resolve_folder

CONFIG = "config.json"
WEIGHTS = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
PREFIX = "medusa_head."


@dataclass(frozen=True)
class MedusaConfig:
    num_heads: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    base_model: str | None = None


class ResBlock(nn.Module):
    """x + SiLU(W x + b): Medusa's residual block (W starts at zero when training)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.act(self.linear(x))
        return out


class MedusaHeads(nn.Module):
    """The heads; ``forward(hidden [..., H])`` gives logits ``[heads, ..., V]``."""

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = nn.ModuleList(
            nn.Sequential(
                *[ResBlock(config.hidden_size) for _ in range(config.num_layers)],
                nn.Linear(config.hidden_size, config.vocab_size, bias=False),
            )
            for _ in range(config.num_heads)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(hidden) for head in self.heads])

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of every head at one hidden state, ``[heads, V]``. Heads that share one
        vocabulary projection (as trained here: the target's, frozen) run their residual
        blocks and then one matrix product, reading the ``V x H`` weights once per step
        instead of once per head (on a CPU that read is most of the heads' cost)."""
        parts, shared = self._split()
        if not shared:
            return torch.stack([projection(blocks(hidden)) for blocks, projection in parts])
        states = torch.stack([blocks(hidden) for blocks, _ in parts])
        return states @ parts[0][1].weight.T

    def _split(self) -> tuple[list[tuple[nn.Module, nn.Linear]], bool]:
        """Each head as (its residual blocks, its vocabulary projection), and whether all
        projections are equal; worked out once, on the first draft (after any ``.to``)."""
        if not hasattr(self, "_parts"):
            parts: list[tuple[nn.Module, nn.Linear]] = []
            for head in self.heads:
                layers = list(cast(nn.Sequential, head))
                parts.append((nn.Sequential(*layers[:-1]), cast(nn.Linear, layers[-1])))
            first = parts[0][1].weight
            self._parts = parts
            self._shared = all(torch.equal(p.weight, first) for _, p in parts)
        return self._parts, self._shared


def load_medusa(source: str, local_only: bool = False) -> MedusaHeads:
    """Medusa heads from a folder or hub id in the hub layout (see the module docstring)."""
    folder = resolve_folder(source, "Medusa heads", [CONFIG, "medusa_lm_head.*"], local_only)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no {CONFIG}", "a Medusa folder needs its config.json")
    raw = json.loads(config_path.read_text())
    if "medusa_num_heads" not in raw:
        raise ModelLoadError(
            f"{config_path} is not a Medusa config (no medusa_num_heads)",
            "point heads at a Medusa checkpoint",
        )
    state = _read_weights(folder)
    layers = int(raw.get("medusa_num_layers", 1))
    heads = int(raw["medusa_num_heads"])
    final = state.get(f"0.{layers}.weight")
    if final is None:
        raise ModelLoadError(
            f"{folder}: no weight 0.{layers}.weight for {layers} residual layer(s)",
            "check medusa_num_layers against the checkpoint",
        )
    vocab, hidden = final.shape
    config = MedusaConfig(heads, layers, hidden, vocab, raw.get("base_model_name_or_path"))
    model = MedusaHeads(config)
    try:
        model.heads.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelLoadError(
            f"{folder}: weights do not fit {heads} heads x {layers} layers: {first}",
            "check medusa_num_heads and medusa_num_layers",
        ) from error
    return model.eval()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    state = read_state(folder, WEIGHTS, "Medusa folder")
    return {key.removeprefix(PREFIX): value.float() for key, value in state.items()}


def save_medusa(heads: MedusaHeads, folder: Path, base_model: str | None = None) -> Path:
    """Write ``heads`` in the hub layout (config.json + medusa_lm_head.safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = heads.config
    (folder / CONFIG).write_text(
        json.dumps(
            {
                "medusa_num_heads": config.num_heads,
                "medusa_num_layers": config.num_layers,
                "hidden_size": config.hidden_size,
                "vocab_size": config.vocab_size,
                "base_model_name_or_path": base_model or config.base_model,
            },
            indent=2,
        )
    )
    state = {k: v.detach().contiguous() for k, v in heads.heads.state_dict().items()}
    save_file(state, str(folder / WEIGHTS[0]))
    return folder


def check_fits(heads: MedusaHeads, hidden_size: int, vocab_size: int, source: str) -> None:
    """One-line errors when heads were trained for another model."""
    config = heads.config
    if config.hidden_size != hidden_size:
        raise ModelLoadError(
            f"Medusa heads {source} read hidden size {config.hidden_size}, the target has "
            f"{hidden_size}",
            "use heads trained for this target",
        )
    if config.vocab_size < vocab_size:
        raise ModelLoadError(
            f"Medusa heads {source} score {config.vocab_size} tokens, the target {vocab_size}",
            "use heads trained for this target",
        )
