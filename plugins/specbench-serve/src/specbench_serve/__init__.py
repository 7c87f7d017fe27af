"""specbench's ``server`` method: benchmark an OpenAI-compatible server under load."""

__all__: list[str] = []
