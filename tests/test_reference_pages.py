"""The documents stay true: the reference pages are what the code generates now, and the
README's preset loads."""

from __future__ import annotations

from pathlib import Path

from specbench.reference_pages import render_pages

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"


def test_reference_pages_are_current() -> None:
    stale = [
        name
        for name, text in render_pages().items()
        if not (REFERENCE / name).is_file()
        or (REFERENCE / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale reference pages {stale}: regenerate them with `nox -s docs`"


def test_every_page_is_linked_from_the_docs_index() -> None:
    index = (REFERENCE.parent / "README.md").read_text(encoding="utf-8")
    assert all(f"reference/{name}" in index for name in render_pages())


def test_the_readme_preset_is_valid(tmp_path: Path) -> None:
    """The preset the README shows loads as written."""
    from specbench.plugins import discover_methods
    from specbench.presets.schema import load_preset

    readme = (REFERENCE.parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```toml\n") + len("```toml\n")
    preset = tmp_path / "readme.toml"
    preset.write_text(readme[start : readme.index("```", start)], encoding="utf-8")
    resolved = load_preset(str(preset), discover_methods())
    assert [m.label for m in resolved.methods] == ["baseline", "speculative", "prompt-lookup"]
