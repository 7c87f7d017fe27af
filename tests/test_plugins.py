"""Method discovery through the specbench.methods entry-point group."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fake_distribution
from presets_for_tests import write_fast_preset

import specbench
from specbench.errors import PluginError
from specbench.plugins import ModelRole, discover_methods
from specbench.presets.schema import load_preset
from specbench.records import SampleRecord, read_records
from specbench.run.runner import run_preset

EXAMPLE_PLUGIN = "specbench-adaptive-k"
INSTALL_HINT = "install it first: pip install -e plugins/specbench-adaptive-k (nox -s tests does)"


def test_builtin_methods_register_through_entry_points() -> None:
    registry = discover_methods()
    for name in ("baseline", "speculative"):
        info = registry.methods[name]
        assert info.package == "specbench"
        assert info.version == specbench.__version__
        assert info.entry_point.startswith("specbench.methods.")
    assert registry.methods["baseline"].needs == {ModelRole.TARGET}
    assert registry.methods["speculative"].needs == {ModelRole.TARGET, ModelRole.DRAFT}


def test_plugin_that_raises_on_import_is_reported_and_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(
        tmp_path,
        "fake-plugins",
        """
        [specbench.methods]
        exploding = fake_exploding:Method
        not-a-method = fake_plain:NotAMethod
        misnamed = fake_plain:Misnamed
        working = fake_plain:Working
        """,
        {
            "fake_exploding": "raise ImportError('boom: needs a library that is not installed')",
            "fake_plain": """
                from specbench.plugins import DecodingMethod

                class NotAMethod:
                    pass

                class Misnamed(DecodingMethod):
                    name = "something-else"
                    def generate(self, request):
                        raise NotImplementedError

                class Working(DecodingMethod):
                    name = "working"
                    def generate(self, request):
                        raise NotImplementedError
            """,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = discover_methods(refresh=True)
    broken = {b.name: b for b in registry.broken}
    assert set(broken) == {"exploding", "not-a-method", "misnamed"}
    assert "ImportError: boom" in broken["exploding"].error
    assert broken["exploding"].package == "fake-plugins"
    assert "not a DecodingMethod" in broken["not-a-method"].error
    assert "registered as 'misnamed'" in broken["misnamed"].error
    assert {"baseline", "speculative", "working"} <= set(registry.methods)
    with pytest.raises(PluginError, match="failed to load: ImportError: boom"):
        registry.get("exploding")


def test_unknown_method_error_lists_what_is_installed() -> None:
    with pytest.raises(PluginError, match=r"installed: .*baseline.*speculative"):
        discover_methods().get("no-such-method")


def test_example_plugin_is_discovered_validated_and_run(tmp_path: Path) -> None:
    registry = discover_methods()
    assert "adaptive-speculative" in registry.methods, INSTALL_HINT
    info = registry.methods["adaptive-speculative"]
    assert info.package == EXAMPLE_PLUGIN and info.version == "0.1.0"

    preset_path = write_fast_preset(tmp_path)
    text = preset_path.read_text().replace(
        "[prompts]",
        '[[methods]]\nname = "adaptive-speculative"\nparams = { start_k = 2, max_k = 6 }\n\n[prompts]',
    )
    preset_path.write_text(text)
    resolved = load_preset(str(preset_path), registry)
    assert [m.label for m in resolved.methods][-1] == "adaptive-speculative"
    out = tmp_path / "out.jsonl"
    run_preset(resolved, output=out)
    samples = [
        r
        for r in read_records(out)
        if isinstance(r, SampleRecord) and r.method == "adaptive-speculative"
    ]
    assert len(samples) == 8
    assert all(1 <= s.stats["mean_k"] <= 6 for s in samples)
