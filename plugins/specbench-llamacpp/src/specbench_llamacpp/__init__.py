"""llama.cpp as a specbench engine: ``name = "llama-cpp"`` in a preset's methods."""

from specbench_llamacpp.method import LlamaCppMethod, LlamaCppParams

__all__ = ["LlamaCppMethod", "LlamaCppParams"]
