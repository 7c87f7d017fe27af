"""Helpers for testing a plugin the way specbench tests its own methods.

``plugins/specbench-adaptive-k/tests`` uses them and is the example to copy: build a toy
target and draft whose distributions are known, build an installed method by name as the
runner builds it, and compare its greedy output with the baseline's token for token.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.models.toy import ToyConfig, ToyLanguageModel
from specbench.plugins import DecodingMethod, MethodModels, discover_methods


def toy_models(
    vocab_size: int = 6,
    order: int = 1,
    seed: int = 0,
    distance: float = 1.0,
    sharpness: float = 1.5,
    eos_bias: float | None = None,
) -> MethodModels:
    """A toy target and a draft at ``distance`` from it (0: the draft is the target)."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, order=order, seed=seed, sharpness=sharpness, eos_bias=eos_bias
    )
    target = ToyLanguageModel(ToyConfig(**common), name="toy-target")
    draft = ToyLanguageModel(ToyConfig(**common, distance=distance), name="toy-draft")
    return MethodModels(target=target, draft=draft)


def make_method(name: str, models: MethodModels, **params: Any) -> DecodingMethod:
    """The installed method ``name`` with validated ``params``, built as the runner builds it."""
    info = discover_methods().get(name)
    return info.cls(info.cls.Params(**params), models)


def request(
    prompt: list[int],
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    stop: frozenset[int] = frozenset(),
) -> GenerationRequest:
    """One generation request (greedy unless ``temperature`` > 0)."""
    return GenerationRequest(
        prompt_ids=prompt,
        max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
        seed=seed,
        stop_token_ids=stop,
    )


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: an engine server, a draft worker. A zombie (exited,
    not yet waited for by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            # The state follows the command name, which may itself hold spaces and ")".
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def terminal_sigint() -> None:
    """``preexec_fn`` for a child process a test interrupts with SIGINT: the default
    disposition, as a terminal gives. A shell's background job (``nohup ... &``, many CI
    runners) starts with SIGINT ignored and Python keeps it ignored, so without this the
    child never sees the Ctrl-C and runs to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
