"""The cluster config: one pydantic model per YAML section, validated once at load."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.kubernetes_config import KubernetesConfig
from serve_app.observability_config import HealthConfig, LoggingSettings, TracingSettings
from serve_app.openai_settings import frontend_problem, task_engine_problem
from serve_app.vllm_adapter import VLLM_VERSION, vllm_engine_arg_names


# vLLM's data_parallel_* engine arguments: the size comes from parallelism.data, the rest from each rank's start.
DATA_PARALLEL_ARGS = ("size", "rank", "start_rank", "size_local", "address", "rpc_port", "backend", "hybrid_lb",
                      "external_lb", "multi_port_external_lb")


class _Section(BaseModel):
    """Base of every config section: unknown fields are errors and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSettings(_Section):
    name: str = Field("llmcluster", description="Name of the cluster; also the Ray Serve application name.",
                      pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)


class AuthConfig(_Section):
    keys_file: str | None = Field(
        None, description="YAML file of API keys with their models and quotas (see docs/security.md); the "
                          "environment variable LLMCLUSTER_KEYS_FILE names one when this is unset.")
    public_paths: tuple[str, ...] = Field(
        ("/health", "/ready", "/metrics"),
        description="Paths answered without an API key (health checks and metrics scrapes).")


class RouterConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the OpenAI endpoint listens on (0.0.0.0 for all).")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI endpoint.")
    replicas: int = Field(1, ge=1, description="Number of router replicas.")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs an HTTP proxy on the router's port: on every node, or only "
                                 "the head (for several Ray nodes sharing one host and port).")
    cpus: float = Field(1.0, ge=0, description="CPU cores reserved for each router replica.")
    api_keys_env: str | None = Field(
        None, description="Name of an environment variable holding comma-separated API keys; unset means no auth.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take end to end.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys, per-key models and quotas.")
    max_attempts: int = Field(
        3, ge=1, description="Replicas one request may be tried on when a replica fails (the first included); "
                             "a stream broken mid-way continues on another replica within the same budget.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest time a client may take to send its request body; slower ones get 408.")
    tracing: TracingSettings = Field(default_factory=TracingSettings,
                                     description="OpenTelemetry tracing of requests; off by default.")


class ParallelismConfig(_Section):
    tensor: int = Field(1, ge=1, description="Tensor-parallel size: devices one model layer is split over.")
    pipeline: int = Field(1, ge=1, description="Pipeline-parallel size: stages the layers are split into.")
    data: int = Field(
        1, ge=1, description="Data-parallel attention ranks of one replica of a MoE model: each rank is an engine "
                             "of tensor x pipeline GPUs with its own attention and KV cache, and the experts are "
                             "spread over all ranks (needs expert: true; GPU only).")
    expert: bool = Field(
        False, description="Expert parallelism for MoE models: a GPU holds whole experts, a share of them, "
                           "instead of a slice of every expert; over the tensor ranks, and over all data ranks "
                           "when data > 1 (GPU only).")

    @property
    def world_size(self) -> int:
        """Workers of one engine: one data-parallel rank."""
        return self.tensor * self.pipeline

    @property
    def workers(self) -> int:
        """Workers (GPUs on a GPU replica) of one replica, all its data-parallel ranks together."""
        return self.world_size * self.data


class ResourcesConfig(_Section):
    device: Literal["cpu", "gpu"] = Field("cpu", description="Device the engine runs on: cpu or gpu.")
    accelerator: str | None = Field(
        None, description="GPU type a replica must run on (e.g. H100, A100-80G); gpu only.")
    node_pool: str | None = Field(
        None, description="Node pool the replica must land on; a custom Ray resource of that name marks its nodes.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPU cores reserved for each engine worker (rank).")
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD"] = Field(
        "PACK", description="How the workers of one replica are placed: PACK fills a node before spilling over.")

    @model_validator(mode="after")
    def _accelerator_needs_gpu(self) -> ResourcesConfig:
        if self.accelerator and self.device != "gpu":
            raise ValueError("resources.accelerator is only allowed with device: gpu")
        return self


class AutoscalingConfig(_Section):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets the model scale to zero when idle.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time; default min_replicas.")
    target_ongoing_requests: float = Field(
        16, gt=0, description="In-flight requests per replica the autoscaler aims for.")
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica accepts at once; more wait in the router.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Load must stay high this long before scaling up.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Load must stay low this long before scaling down.")
    look_back_period_s: float = Field(
        30.0, gt=0, description="Window over which in-flight requests are averaged for each scaling decision.")
    cold_start_timeout_s: float = Field(
        300.0, gt=0, description="How long a request to a model with no ready replica waits before a 503.")
    max_queued_requests: int = Field(
        512, ge=0, description="Requests one router replica lets wait for a replica of this model; past it "
                               "the router answers at once: 429 when replicas are busy, 503 when scaling from zero.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must be <= max_replicas")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError("autoscaling.initial_replicas must lie between min_replicas and max_replicas")
        return self


class RequestLimitsConfig(_Section):
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens one request may ask to generate (max_tokens / "
                                "max_completion_tokens); unset: up to the context length.")
    clamp_max_tokens: bool = Field(
        False, description="Lower a larger max_tokens to the cap instead of answering 400.")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request) accepted.")
    max_best_of: int = Field(8, ge=1, description="Largest `best_of` (completions) accepted.")


class ModelConfig(_Section):
    name: str = Field(description="Served model name: the OpenAI `model` field.", min_length=1)
    aliases: tuple[str, ...] = Field((), description="Other names the router accepts for this model.")
    source: str = Field(
        description="Where the weights come from: builtin:<name>, a Hugging Face repo id, or a local directory.")
    task: Literal["generate", "embed"] = Field(
        "generate", description="What the model serves: generate (chat, completions, responses) or embed "
                                "(embeddings, through vLLM's pooling runner); both serve tokenize and detokenize.")
    engine: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments (AsyncEngineArgs field names), e.g. max_model_len.")
    frontend: dict[str, Any] = Field(
        default_factory=dict, description="Settings of vLLM's OpenAI layer for this model (FrontendArgs names), "
                                          "e.g. tool_call_parser and enable_auto_tool_choice, chat_template.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig,
                                           description="Tensor, pipeline, data and expert parallelism of one replica.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig,
                                       description="Device, accelerator and node pool of one replica.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig,
                                           description="Replica count bounds and scaling behaviour.")
    limits: RequestLimitsConfig = Field(default_factory=RequestLimitsConfig,
                                        description="Bounds on what one request may ask of this model.")
    drain_timeout_s: float = Field(
        120.0, ge=0, description="How long a replica being stopped (scale-down, redeploy, shutdown) keeps "
                                 "answering its in-flight requests before it is stopped with them; set it above "
                                 "the longest generation you serve.")
    health: HealthConfig = Field(default_factory=HealthConfig,
                                 description="How Serve checks a replica's health and when a busy "
                                             "engine counts as hung.")

    @field_validator("engine")
    @classmethod
    def _engine_args_owned_elsewhere(cls, engine: dict[str, Any]) -> dict[str, Any]:
        owned = {"model": "source", "served_model_name": "name/aliases", "runner": "task",
                 "tensor_parallel_size": "parallelism.tensor", "pipeline_parallel_size": "parallelism.pipeline",
                 "enable_expert_parallel": "parallelism.expert",
                 **{f"data_parallel_{arg}": "parallelism.data" for arg in DATA_PARALLEL_ARGS}}
        for key, where in owned.items():
            if key in engine:
                raise ValueError(f"engine.{key} is set by the model's `{where}`; remove it from engine")
        known = vllm_engine_arg_names()
        for key in engine:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ValueError(f"engine.{key} is not a vLLM {VLLM_VERSION} engine argument{hint}")
        return engine

    @model_validator(mode="after")
    def _parallelism_fits_device(self) -> ModelConfig:
        parallelism, resources = self.parallelism, self.resources
        if parallelism.data > 1 and not parallelism.expert:
            raise ValueError("parallelism.data > 1 needs parallelism.expert: true: data-parallel ranks share one "
                             "MoE model's experts; for more copies of a dense model raise autoscaling.max_replicas")
        if (parallelism.expert or parallelism.data > 1) and resources.device != "gpu":
            raise ValueError(f"parallelism.expert needs resources.device: gpu: vLLM {VLLM_VERSION}'s CPU build "
                             "cannot run expert parallelism (its CPU MoE kernel ignores the expert map, and its "
                             "CPU communicator lacks the all_gatherv that data-parallel MoE layers use)")
        if parallelism.data > 1 and resources.placement_strategy == "STRICT_PACK":
            raise ValueError("resources.placement_strategy STRICT_PACK cannot place parallelism.data > 1: the "
                             "ranks of a data-parallel group are gang-scheduled with PACK or SPREAD")
        return self

    @model_validator(mode="after")
    def _settings_fit_task(self) -> ModelConfig:
        problem = task_engine_problem(self.engine, self.task) or frontend_problem(self.frontend, self.task,
                                                                                   VLLM_VERSION)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class ClusterConfig(_Section):
    cluster: ClusterSettings = Field(default_factory=ClusterSettings, description="Cluster identity.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="The OpenAI-compatible router.")
    models: tuple[ModelConfig, ...] = Field(description="Models served by the cluster.", min_length=1)
    logging: LoggingSettings = Field(default_factory=LoggingSettings,
                                     description="Log format and level of llmcluster's own loggers.")
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig,
        description="How `llmcluster render k8s` places the cluster on Kubernetes (KubeRay); unused elsewhere.")

    @model_validator(mode="after")
    def _names_unique(self) -> ClusterConfig:
        seen: dict[str, str] = {}
        for model in self.models:
            for served in model.served_names:
                if served in seen:
                    raise ValueError(f"model name or alias {served!r} is used by both "
                                     f"{seen[served]!r} and {model.name!r}")
                seen[served] = model.name
        return self

    def model(self, name: str) -> ModelConfig:
        """The model served under `name` (its name or an alias); KeyError if none."""
        for model in self.models:
            if name in model.served_names:
                return model
        raise KeyError(name)


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file, the field and what is allowed."""


def parse_config(data: Any, origin: str = "config") -> ClusterConfig:
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin} is invalid:\n{_describe(exc)}") from None


def load_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, origin=str(path))


def longest_drain_s(config: ClusterConfig) -> float:
    """The longest drain of any model: what the router, and a pod stopping under replicas, must wait for."""
    return max(model.drain_timeout_s for model in config.models)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_section_at(error["loc"][:-1]).model_fields)
            message = f"unknown field; allowed here: {allowed}"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The config section class found by following a validation error's location from the top."""
    section: type[BaseModel] = ClusterConfig
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = section.model_fields[part].annotation
        candidates = [annotation, *get_args(annotation)]
        section = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return section
