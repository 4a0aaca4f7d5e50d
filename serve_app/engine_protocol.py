"""What the serving and batch code need from an engine: the `Engine` protocol, its endpoints and its data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, Self

from serve_app.data_parallel import DataParallelRank


class Endpoint(StrEnum):
    """The OpenAI endpoints an engine answers, by the names the router and batch input use."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"

    @property
    def tasks(self) -> frozenset[str]:
        """The model tasks (a model's config `task`) whose engines answer this endpoint."""
        return _ENDPOINT_TASKS[self]


# Generation endpoints need a generating model, embeddings a pooling one; both tokenize.
_ENDPOINT_TASKS = {
    Endpoint.CHAT: frozenset({"generate"}), Endpoint.COMPLETIONS: frozenset({"generate"}),
    Endpoint.RESPONSES: frozenset({"generate"}), Endpoint.EMBEDDINGS: frozenset({"embed"}),
    Endpoint.TOKENIZE: frozenset({"generate", "embed"}), Endpoint.DETOKENIZE: frozenset({"generate", "embed"}),
}


@dataclass(frozen=True)
class EngineSpec:
    """What one engine replica runs: resolved weights, the names it answers to, and engine arguments."""

    model_path: str
    served_names: tuple[str, ...]
    engine_args: dict[str, Any] = field(default_factory=dict)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    distributed_backend: str | None = None  # the engine's executor: vllm_adapter.executor_backend names it
    # CPU only: the cores each rank runs on, one tuple per rank; empty leaves the choice to the engine.
    rank_cores: tuple[tuple[int, ...], ...] = ()
    expert_parallel: bool = False  # a MoE model's experts spread over the ranks, whole, instead of sliced
    data_parallel: DataParallelRank | None = None  # this engine's rank when the replica is data parallel
    stall_timeout_s: float | None = None  # busy without an engine step this long: hung; None: never checked
    task: str = "generate"  # the model's config `task`: generate (chat, completions, responses) or embed
    # Settings of vLLM's OpenAI layer (its FrontendArgs names), such as the tool-call parser.
    frontend_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineReply:
    """An answer from the OpenAI layer: a JSON body with its status, or a stream of SSE lines."""

    status: int
    body: dict[str, Any] | None = None
    stream: AsyncIterator[str] | None = None


class Engine(Protocol):
    """One model's engine inside a Serve replica or a batch actor; vllm_adapter.VLLMEngine in production.

    Started on the event loop that serves it; the methods are called from that loop only."""

    @classmethod
    async def start(cls, spec: EngineSpec, placement_group: Any = None) -> Self:
        """Load the model; `placement_group` is the replica's, whose bundles the engine's workers use."""
        ...

    @property
    def max_model_len(self) -> int:
        """Tokens of one sequence, prompt and output."""
        ...

    @property
    def max_num_seqs(self) -> int:
        """Sequences the scheduler runs at once: a client keeps more in flight than this to keep it busy."""
        ...

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """Answer an OpenAI chat completion request body; a bad body is a 4xx reply, never an exception."""
        ...

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """Answer an OpenAI completion request body, as `chat` does."""
        ...

    async def responses(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """Answer an OpenAI Responses API request body, as `chat` does; a stream is of `event:` SSE lines."""
        ...

    async def embeddings(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """Answer an OpenAI embeddings request body (an embed model's), as `chat` does, never streaming."""
        ...

    async def tokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """The token ids of a prompt or of chat messages, as vLLM's /tokenize answers."""
        ...

    async def detokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """The text of token ids, as vLLM's /detokenize answers."""
        ...

    async def check_health(self) -> None:
        """Raise when the engine is dead or hung."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine holds now: its load."""
        ...

    def metrics_registry(self) -> Any:
        """The prometheus_client registry holding the engine's own metrics."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and the processes it started."""
        ...


async def answer(engine: Engine, endpoint: Endpoint, body: dict[str, Any], request_id: str) -> EngineReply:
    """`body` answered by the engine's method for `endpoint`."""
    match endpoint:
        case Endpoint.CHAT:
            return await engine.chat(body, request_id)
        case Endpoint.COMPLETIONS:
            return await engine.completions(body, request_id)
        case Endpoint.RESPONSES:
            return await engine.responses(body, request_id)
        case Endpoint.EMBEDDINGS:
            return await engine.embeddings(body, request_id)
        case Endpoint.TOKENIZE:
            return await engine.tokenize(body, request_id)
        case Endpoint.DETOKENIZE:
            return await engine.detokenize(body, request_id)
