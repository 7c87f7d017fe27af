"""The ``server`` method's parameters: which server, how to ask it, and under what load."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from specbench.api import MethodParams, ServerLauncher, server_launchers


class ServerParams(MethodParams):
    """One server configuration at one load level.

    Give ``url`` for a server that is already running (specbench never starts or stops it),
    or ``launch`` for one specbench starts itself: ``launch.engine`` names a launcher
    (``llama-server`` from specbench-llamacpp, ``vllm`` from specbench-vllm) and the other
    keys are that launcher's parameters (those of the ``llama-cpp`` / ``vllm`` methods).
    """

    url: str | None = Field(
        None, description="Base URL of a running server (http://host:port, /v1 optional)."
    )
    launch: dict[str, Any] | None = Field(
        None,
        description='A server specbench starts: engine = "llama-server" or "vllm", then the '
        "launcher's own fields (draft, spec_type, draft_max...; speculative, dtype...).",
    )
    plain_url: str | None = Field(
        None,
        description="With url: the same model served without speculation. The preset method "
        "with that url is this one's reference (speedup, = baseline, audit).",
    )
    model: str | None = Field(
        None, description="The model name requests carry (default: the server's first model)."
    )
    api: Literal["completions", "chat"] = Field(
        "completions",
        description="/v1/completions (the prompt as token ids where accepted) or "
        "/v1/chat/completions (the conversation as messages).",
    )
    prompt_as: Literal["auto", "token_ids", "text"] = Field(
        "auto",
        description="completions: token ids (auto, if the server accepts them) or the "
        "decoded text. chat always sends text messages.",
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (Bearer)."
    )
    concurrency: int = Field(
        1, ge=1, le=4096, description="Requests in flight (closed loop; a cap with request_rate)."
    )
    request_rate: float | None = Field(
        None,
        gt=0,
        description="Open loop: requests per second, Poisson arrivals (vllm bench serve "
        "--request-rate); concurrency then caps those in flight.",
    )
    ignore_eos: bool = Field(False, description="Ask the server to ignore end of sequence.")
    send_seed: bool = Field(True, description="Send each request's seed (the run's seeds).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="More request fields, sent as written (e.g. {return_token_ids = true} for "
        "vLLM, so outputs are ids rather than re-tokenized text).",
    )
    metrics: bool = Field(
        True, description="Read the server's speculative counters from /metrics per level."
    )
    request_timeout_s: float = Field(600.0, gt=0, description="A request's time limit.")
    startup_timeout_s: float | None = Field(
        None, gt=0, description="launch: how long the server may take to become healthy."
    )

    @field_validator("url", "plain_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL; fix: write http://host:port")
        return value.rstrip("/").removesuffix("/v1")

    @field_validator("launch")
    @classmethod
    def _launch(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        engine = value.get("engine")
        launcher = launcher_class(engine)
        fields = {k: v for k, v in value.items() if k != "engine"}
        try:
            params = launcher.Params.model_validate(fields)
        except ValidationError as error:  # the launcher's own fields
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            problem = f"{where}: {first['msg']}" if where else first["msg"]
            raise ValueError(
                f"{problem}; fix: see the {engine} launcher's fields in docs/serving.md"
            ) from None
        return {"engine": engine, **params.model_dump(mode="json", exclude_defaults=True)}

    @model_validator(mode="after")
    def _one_server(self) -> ServerParams:
        if (self.url is None) == (self.launch is None):
            raise ValueError(
                "a server method needs exactly one of url and launch; fix: give url for a "
                'running server, or launch = {engine = "llama-server", ...} for one to start'
            )
        if self.plain_url is not None and self.url is None:
            raise ValueError(
                "plain_url goes with url; fix: drop it (a launched server's plain twin is implied)"
            )
        return self

    @property
    def launcher(self) -> tuple[ServerLauncher, MethodParams] | None:
        """The launcher and its validated parameters (``None`` for an external url)."""
        if self.launch is None:
            return None
        cls = launcher_class(self.launch["engine"])
        fields = {k: v for k, v in self.launch.items() if k != "engine"}
        return cls(), cls.Params.model_validate(fields)


def launcher_class(engine: Any) -> type[ServerLauncher]:
    """The launcher called ``engine``, or a ``ValueError`` naming those installed."""
    group = server_launchers()
    if isinstance(engine, str) and engine in group.loaded:
        return group.loaded[engine].cls
    if isinstance(engine, str) and engine in group.broken:
        broken = group.broken[engine]
        raise ValueError(
            f"launcher '{engine}' from {broken.package} failed to load: {broken.error}; fix: "
            f"reinstall or fix {broken.package}"
        )
    known = ", ".join(sorted(group.loaded)) or "none"
    hint = {
        "llama-server": "pip install -e plugins/specbench-llamacpp",
        "vllm": "pip install -e plugins/specbench-vllm, in vLLM's environment",
    }.get(str(engine), f"name one of: {known}")
    raise ValueError(
        f"engine = {engine!r} is not an installed server launcher (installed: {known}); fix: {hint}"
    )
