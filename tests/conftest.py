from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from specbench.models.backends import discover_backends
from specbench.plugins import discover_methods
from specbench.prompts.sources import source_plugins
from specbench.prompts.tasks import task_registry

# Tests use toy and tiny models whose matrices are too small to gain from threads, and a
# second busy process (a benchmark on the same two cores) makes OpenMP's spinning threads
# thrash: one thread keeps the suite fast and its timing steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Entry points are re-read for every test, so installs or sys.path changes show up."""
    discover_methods(refresh=True)
    discover_backends(refresh=True)
    task_registry.cache_clear()
    source_plugins.cache_clear()
    yield
    discover_methods(refresh=True)
    discover_backends(refresh=True)
    task_registry.cache_clear()
    source_plugins.cache_clear()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny random Llama and Qwen2 target/draft pairs sharing one tokenizer, saved as folders."""
    pytest.importorskip("transformers")
    from hf_fixtures import build_model, build_tokenizer, perturbed_copy, save

    root = tmp_path_factory.mktemp("tiny-hf")
    tokenizer = build_tokenizer()
    folders: dict = {"tokenizer": tokenizer, "root": root}
    for arch in ("llama", "qwen2"):
        target = build_model(arch, len(tokenizer), seed=0)
        draft = perturbed_copy(target, scale=0.3)
        folders[arch] = {
            "target": save(target, tokenizer, root / f"{arch}-target"),
            "draft": save(draft, tokenizer, root / f"{arch}-draft"),
            "target_model": target,
        }
    return folders


@pytest.fixture
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """specbench's bf16 kernels on the path ``request.param`` (``kernel_paths.ISAS``) while
    the test runs."""
    from specbench.models import bf16_kernels

    with bf16_kernels.use_isa(request.param):
        yield request.param


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the deliberately broken methods (``broken_methods``) through the public
    entry-point group, as a third-party plugin would be."""
    from broken_methods import ENTRY_POINTS
    from helpers import fake_distribution

    root = tmp_path / "site"
    fake_distribution(root, "specbench-broken-methods", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    discover_methods(refresh=True)
