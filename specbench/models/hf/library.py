"""The transformers library itself: importing it with a one-line error, and quieting its
load-time output.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from specbench.errors import ModelLoadError
from specbench.install_hints import install_extra


def require_transformers() -> Any:
    """The transformers module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(
            "the Hugging Face backend needs transformers, which is not installed",
            install_extra("hf"),
        ) from error
    return transformers


@contextlib.contextmanager
def quiet_transformers(
    on_tensor: Callable[[int, int], None] | None = None,
) -> Iterator[None]:
    """Keep transformers' progress bars and known-harmless warnings off the user's screen.

    GGUF dequantization reports progress through ``on_tensor(done, total)`` instead of the
    tqdm bar transformers would print.
    """
    transformers = require_transformers()
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        gguf_utils = None
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    if original_tqdm is not None:
        gguf_utils.tqdm = _counting_iterator(on_tensor)  # type: ignore[union-attr]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm  # type: ignore[union-attr]
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


def _counting_iterator(
    on_item: Callable[[int, int], None] | None,
) -> Callable[..., Iterator[Any]]:
    def iterate(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        for done, item in enumerate(items):
            if on_item is not None:
                on_item(done, len(items))
            yield item
        if on_item is not None:
            on_item(len(items), len(items))

    return iterate
