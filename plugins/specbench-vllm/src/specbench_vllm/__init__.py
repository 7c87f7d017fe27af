"""vLLM as a specbench engine: ``name = "vllm"`` in a preset's methods."""

from specbench_vllm.method import VllmMethod, VllmParams

__all__ = ["VllmMethod", "VllmParams"]
