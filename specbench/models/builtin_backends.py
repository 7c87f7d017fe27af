"""specbench's own model backends: ``toy``, ``hf`` and ``dummy`` (registered as plugins)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from specbench.models.backends import ModelBackend
from specbench.models.base import LanguageModel, Tokenizer
from specbench.models.specs import DummyModelSpec, HFModelSpec, ToyModelSpec
from specbench.models.toy import ToyConfig, ToyLanguageModel, ToyTokenizer


class ToyBackend(ModelBackend):
    """Analytic toy models with known distributions (exactness tests, instant demos)."""

    name = "toy"
    description = "Analytic toy models with known distributions."
    Spec = ToyModelSpec

    def load(self, spec: Any, role: str) -> LanguageModel:
        config = ToyConfig(**spec.model_dump(exclude={"backend"}))
        return ToyLanguageModel(config, name=f"toy-{role}")

    def load_tokenizer(self, spec: Any, local_only: bool = True) -> Tokenizer:
        return ToyTokenizer(spec.vocab_size)

    def notes(self, spec: Any, role: str) -> list[str]:
        out = []
        if role == "target" and spec.forward_ms == 0 and spec.token_ms == 0:
            out.append(
                "a toy target with forward_ms = 0 and token_ms = 0 costs only Python overhead, "
                "so its speedups say little about speculation (give it forward_ms, e.g. 20; "
                "see `specbench backends toy`)"
            )
        if role == "draft" and spec.distance == 0:
            out.append(
                "a toy draft with distance = 0 is the target itself when it shares its seed: "
                "every draft is accepted (give it a distance, e.g. 0.5)"
            )
        return out


class HFBackend(ModelBackend):
    """Hugging Face transformers models: catalogue names, local folders, hub ids, GGUF."""

    name = "hf"
    description = "Hugging Face transformers: catalogue name, local folder or hub id."
    Spec = HFModelSpec

    def load(self, spec: Any, role: str) -> LanguageModel:
        from specbench.models.catalog import resolve_model_source
        from specbench.models.hf.loading import load_hf_model

        return load_hf_model(spec, resolve_model_source(spec.model), spec.model, role)

    def load_tokenizer(self, spec: Any, local_only: bool = True) -> Tokenizer:
        from specbench.models.catalog import resolve_model_source
        from specbench.models.hf.loading import load_hf_tokenizer

        return load_hf_tokenizer(spec, resolve_model_source(spec.model), local_only=local_only)

    def unavailable_reason(self, spec: Any) -> str | None:
        from specbench.models.catalog import CATALOG

        if spec.model in CATALOG:
            if CATALOG[spec.model].fetched:
                return None
            return (
                f"catalogue model {spec.model} is not fetched (specbench models fetch {spec.model})"
            )
        if Path(spec.model).expanduser().exists():
            return None
        if "/" in spec.model and not spec.model.startswith((".", "/", "~")):
            if _in_hub_cache(spec):
                return None
            return f"{spec.model} is a hub id that is not downloaded"
        return None  # load_tokenizer reports it as an error

    def identity(self, spec: Any) -> dict[str, Any]:
        from specbench.models.catalog import CATALOG

        identity: dict[str, Any] = spec.model_dump(mode="json")
        identity.pop("device", None)  # where it runs does not change what it computes
        if spec.model in CATALOG:
            identity["weights"] = CATALOG[spec.model].sha256
        elif Path(spec.model).expanduser().is_dir():
            identity["weights"] = _folder_fingerprint(Path(spec.model).expanduser())
        return identity


class DummyBackend(ModelBackend):
    """Real architectures at real shapes with random weights (timing at scale)."""

    name = "dummy"
    description = "Random weights at a real architecture's shape (timing only)."
    Spec = DummyModelSpec

    def load(self, spec: Any, role: str) -> LanguageModel:
        from specbench.models.dummy import load_dummy_model

        return load_dummy_model(spec, role)

    def load_tokenizer(self, spec: Any, local_only: bool = True) -> Tokenizer:
        from specbench.models.dummy import dummy_tokenizer

        return dummy_tokenizer(spec)


def _in_hub_cache(spec: HFModelSpec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(spec.model, "config.json", revision=spec.revision)
    return isinstance(found, str)


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".gguf"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]
