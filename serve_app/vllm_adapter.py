"""Everything llmcluster takes from vLLM's internals: a vLLM upgrade touches this module only."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

from serve_app.engine_protocol import EngineReply, EngineSpec
from serve_app.errors import openai_error
from serve_app.liveness import StallWatch
from serve_app.process_fate import die_with_parent
from serve_app.reply_shapes import json_reply, sse_lines
from serve_app.request_errors import field_with_huge_int, invalid_request_body
from serve_app.tracing import engine_span

logger = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"
# fate_share_engine_process's name as pyproject.toml registers it in vLLM's general plugin group.
FATE_SHARING_PLUGIN = "llmcluster_fate_sharing"
# The multiprocessing name of the worker processes vLLM's process executor starts (VllmWorker-<rank>).
_WORKER_PROCESS = "VllmWorker"
# vLLM's names for the processes it starts: EngineCore (EngineCore_DP<n>) and its workers (VllmWorker-<rank>).
_ENGINE_PROCESSES = ("EngineCore", "VllmWorker")
# vLLM's executors: its worker processes beside the engine (CPU), or Ray actors in the replica's placement group.
PROCESS_EXECUTOR, RAY_EXECUTOR = "mp", "ray"
# The cores each CPU rank binds its threads to: "0,1|2,3" binds rank 0 to cores 0-1 and rank 1 to cores 2-3.
CPU_BINDING_ENV = "VLLM_CPU_OMP_THREADS_BIND"
# The node address vLLM's Ray executor gives its workers; it must agree with the address Ray uses.
ENGINE_HOST_ENV = "VLLM_HOST_IP"
# The bundles of the replica's placement group vLLM's Ray executor puts its workers in, when not the first ones.
BUNDLES_ENV = "VLLM_RAY_BUNDLE_INDICES"


# The engine arguments of the pinned vLLM, kept beside this module so a config is checked without
# importing vLLM (seconds) or even having it installed; a test compares the list with vLLM itself.
ENGINE_ARGS_FILE = Path(__file__).with_name("vllm_engine_args.txt")


@cache
def vllm_engine_arg_names() -> frozenset[str]:
    """The keyword arguments the pinned vLLM's AsyncEngineArgs accepts."""
    return frozenset(ENGINE_ARGS_FILE.read_text().split())


def installed_engine_arg_names() -> frozenset[str]:
    """The same, read from the installed vLLM."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def executor_backend(device: str, world_size: int) -> str | None:
    """vLLM's distributed executor: none for one worker, processes on CPU, Ray actors on GPU (vLLM's CPU build
    refuses the Ray executor)."""
    if world_size == 1:
        return None
    return RAY_EXECUTOR if device == "gpu" else PROCESS_EXECUTOR


def pin_engine_host(address: str) -> None:
    """Make `address` the node address of vLLM's Ray executor unless one is set; Ray hands this process's
    environment to the workers it starts, engines included."""
    os.environ.setdefault(ENGINE_HOST_ENV, address)


def cpu_binding_env(spec: EngineSpec) -> dict[str, str]:
    """The environment that binds each CPU rank of `spec` to its own cores; empty when vLLM may choose. vLLM's
    automatic binding gives each rank a NUMA node, and ranks sharing one node need explicit cores."""
    if not spec.rank_cores:
        return {}
    return {CPU_BINDING_ENV: "|".join(",".join(str(core) for core in cores) for cores in spec.rank_cores)}


def rank_bundles_env(spec: EngineSpec) -> dict[str, str]:
    """The environment that gives a data-parallel rank's workers its own bundles of the gang's placement group."""
    if spec.data_parallel is None:
        return {}
    return {BUNDLES_ENV: ",".join(str(index) for index in spec.data_parallel.bundles)}


def _place_ranks(spec: EngineSpec) -> None:
    # Set before vLLM starts its engine and workers, which inherit it; it serves both the replica and batch paths.
    os.environ.update(cpu_binding_env(spec) | rank_bundles_env(spec))


class VLLMEngine:
    """The `Engine` of production: vLLM's AsyncLLM with its own OpenAI serving layer in front (chat,
    completions, responses, embeddings, tokenization, models)."""

    def __init__(self, client: Any, state: Any, watch: StallWatch | None = None, task: str = "generate") -> None:
        self._client = client
        self._watch = watch
        self._task = task
        # vLLM sets up the serving classes of its model's tasks only: a generating model has no embeddings.
        self._chat = getattr(state, "openai_serving_chat", None)
        self._completion = getattr(state, "openai_serving_completion", None)
        self._responses = getattr(state, "openai_serving_responses", None)
        self._embedding = getattr(state, "serving_embedding", None)
        self._tokenization = getattr(state, "serving_tokenization", None)
        self._models = state.openai_serving_models

    @classmethod
    async def start(cls, spec: EngineSpec, placement_group: Any = None) -> VLLMEngine:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.executor.abstract import Executor
        from starlette.datastructures import State

        warn_unless_fate_shared()
        _place_ranks(spec)
        engine_args = AsyncEngineArgs(**engine_kwargs(spec))
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if placement_group is not None:
            vllm_config.parallel_config.placement_group = placement_group
        watch = StallWatch(spec.stall_timeout_s) if spec.stall_timeout_s else None
        client = AsyncLLM(
            vllm_config=vllm_config,
            executor_class=Executor.get_class(vllm_config),
            log_requests=True,  # one line per request with its id ("Added request chatcmpl-<id>-..."), no prompt
            log_stats=not engine_args.disable_log_stats,
            stat_loggers=[_step_reporter(watch)] if watch else None,
        )
        state = State()
        args = argparse.Namespace(**(vars(FrontendArgs()) | vars(engine_args) | spec.frontend_args))
        await init_app_state(client, state, args, supported_tasks=await client.get_supported_tasks())
        return cls(client, state, watch, spec.task)

    @property
    def max_model_len(self) -> int:
        return self._client.model_config.max_model_len

    @property
    def max_num_seqs(self) -> int:
        """Sequences the scheduler runs at once: a client keeps more in flight than this to keep it busy."""
        return self._client.vllm_config.scheduler_config.max_num_seqs

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return await self._serve(ChatCompletionRequest, self._chat and self._chat.create_chat_completion, body,
                                 request_id, "chatcmpl-")

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return await self._serve(CompletionRequest, self._completion and self._completion.create_completion, body,
                                 request_id, "cmpl-")

    async def responses(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        serving = self._responses

        async def create(request: Any, raw_request: Any = None) -> Any:
            result = await serving.create_responses(request, raw_request=raw_request)
            return sse_lines(result) if isinstance(result, AsyncIterator) else result

        # vLLM uses a Responses request's id as it is, as the response id: it gets its "resp_" here.
        return await self._serve(ResponsesRequest, serving and create, body, request_id, "resp_", prefixed=True)

    async def embeddings(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

        if body.get("encoding_format") in ("bytes", "bytes_only"):  # a binary body: not JSON, not relayed
            return EngineReply(400, openai_error(400, "encoding_format must be float or base64",
                                                 param="encoding_format"))
        return await self._serve(EmbeddingRequest, self._embedding, body, request_id, "embd-")

    async def tokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.serve.tokenize.protocol import TokenizeRequest

        serving = self._tokenization
        return await self._serve(TokenizeRequest, serving and serving.create_tokenize, body, request_id, "tokenize-")

    async def detokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest

        serving = self._tokenization
        return await self._serve(DetokenizeRequest, serving and serving.create_detokenize, body, request_id,
                                 "tokenize-")

    async def _serve(self, request_type: Any, create: Any, body: dict[str, Any], request_id: str,
                     id_prefix: str, prefixed: bool = False) -> EngineReply:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        if create is None:  # the router sends each endpoint to models of its task only; this is the backstop
            return EngineReply(400, openai_error(400, f"this model's task is {self._task}: it does not serve "
                                                      f"this endpoint", param="model"))
        try:
            request = _request_adapter(request_type).validate_python(body)
        except Exception as exc:  # only the body is at fault here: see invalid_request_body
            return EngineReply(400, invalid_request_body(exc))
        if (name := field_with_huge_int(body, type(request).model_fields)) is not None:
            return EngineReply(400, openai_error(400, f"invalid request: {name}: an integer outside the 64-bit range",
                                                 param=name))
        # vLLM's OpenAI layer names the engine request `<id_prefix><request_id>` (the engine adds a suffix).
        span = engine_span(request_id, id_prefix + request_id)
        try:
            request.request_id = id_prefix + request_id if prefixed else request_id
            with span.current():
                result = await create(request, raw_request=None)
        except Exception as exc:  # vLLM raises for bad input as well as engine faults; its mapping tells which
            result = create_error_response(exc)
        except BaseException:  # cancelled: the client went away
            span.end()
            raise
        if isinstance(result, AsyncIterator):
            return EngineReply(200, stream=span.ending_with(result))
        span.end()
        if isinstance(result, ErrorResponse):
            return EngineReply(result.error.code, result.model_dump())
        return json_reply(result)

    async def check_health(self) -> None:
        await self._client.check_health()  # notices a dead engine core only
        if self._watch is not None:
            self._watch.check(self.unfinished_requests())  # and this a hung one

    def metrics_registry(self) -> Any:
        """The prometheus registry holding this engine's `vllm:` metrics: vLLM records them in the process's
        global one (a multiprocess one when PROMETHEUS_MULTIPROC_DIR is set), with log_stats on."""
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        return get_prometheus_registry()

    def unfinished_requests(self) -> int:
        return self._client.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self._client.shutdown()


class OfflineEngine:
    """vLLM's offline `LLM` built from the same spec: the yardstick the batch benchmark measures against."""

    def __init__(self, spec: EngineSpec) -> None:
        from vllm import LLM

        _place_ranks(spec)
        self._llm = LLM(**engine_kwargs(spec))

    def generate(self, prompts: list[str], sampling: dict[str, Any]) -> list[int]:
        """Runs all prompts at once; the number of output tokens of each."""
        from vllm import SamplingParams

        outputs = self._llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)
        return [sum(len(choice.token_ids) for choice in output.outputs) for output in outputs]

    def shutdown(self) -> None:
        # Stops the engine core process; left running, it keeps the interpreter from exiting.
        self._llm.llm_engine.engine_core.shutdown()


def fate_share_engine_process() -> None:
    """vLLM general plugin, run by vLLM early in each of its processes: engine processes die with their parent.

    In the engine core and its workers, which vLLM spawns with multiprocessing, it arms a parent-death signal:
    a replica that dies takes its engine core down, and the engine core its workers, however the replica died
    (Serve's stop, Ray, a SIGKILL, the OOM killer, Ray's raylet gone). vLLM's own shutdown stays the normal
    path; this is the floor under it. vLLM starts the engine core from the thread that builds the engine (the
    replica's event loop) and the workers from the engine core's main thread: both live as long as their
    process. A process vLLM forks rather than spawns inherits vLLM's "plugins loaded" flag and skips this; in
    a Ray actor vLLM always spawns."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and multiprocessing.current_process().name.startswith(_ENGINE_PROCESSES):
        die_with_parent(parent.pid)


def buffer_cpu_pipeline_stages() -> None:
    """vLLM general plugin: on CPU, every pipeline stage after the first gets the buffer its input arrives in.

    vLLM's model runner makes that buffer in its warm-up pass, which vLLM 0.32's CPU worker skips when the model
    runs eagerly (enforce_eager): every later stage then fails its first step (`assert self.intermediate_tensors
    is not None` in sync_and_gather_intermediate_tensors). Here it is made on first use, as the warm-up makes it."""
    import multiprocessing

    if not multiprocessing.current_process().name.startswith(_WORKER_PROCESS):
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    gather = CPUModelRunner.sync_and_gather_intermediate_tensors

    def sync_and_gather(self: Any, num_tokens: int, intermediate_tensors: Any, sync_self: bool) -> Any:
        if self.intermediate_tensors is None:
            self.intermediate_tensors = self.model.make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.model_config.dtype, device=self.device)
        return gather(self, num_tokens, intermediate_tensors, sync_self)

    CPUModelRunner.sync_and_gather_intermediate_tensors = sync_and_gather


def warn_unless_fate_shared() -> None:
    """Say so when this replica's engine processes would outlive it, and why."""
    from importlib.metadata import entry_points

    from vllm import envs

    if not any(plugin.name == FATE_SHARING_PLUGIN for plugin in entry_points(group="vllm.general_plugins")):
        reason = "llmcluster is not installed as a package (pip install -e .), so vLLM does not find its plugin"
    elif envs.VLLM_PLUGINS is not None and FATE_SHARING_PLUGIN not in envs.VLLM_PLUGINS:
        reason = f"VLLM_PLUGINS leaves out {FATE_SHARING_PLUGIN}"
    else:
        return
    logger.warning("engine processes may outlive this replica if it is killed: %s", reason)


@cache
def _request_adapter(request_type: Any) -> Any:
    """The validator of one of vLLM's request types; some are unions of models (TokenizeRequest)."""
    from pydantic import TypeAdapter

    return TypeAdapter(request_type)


def _step_reporter(watch: StallWatch) -> type:
    """A vLLM stat logger that only tells `watch` of each engine step: vLLM calls `record` once per step."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepReporter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, *_: Any, **__: Any) -> None:
            watch.stepped()

        def log_engine_initialized(self) -> None:
            pass

    return StepReporter


def engine_kwargs(spec: EngineSpec) -> dict[str, Any]:
    """The vLLM engine arguments (AsyncEngineArgs) that run `spec`."""
    kwargs = {
        **spec.engine_args,
        "model": spec.model_path,
        "served_model_name": list(spec.served_names),
        "tensor_parallel_size": spec.tensor_parallel,
        "pipeline_parallel_size": spec.pipeline_parallel,
    }
    if spec.task == "embed":
        kwargs["runner"] = "pooling"  # vLLM's pooling runner; `convert` (default auto) adapts a generating model
    if spec.distributed_backend:
        kwargs["distributed_executor_backend"] = spec.distributed_backend
    if spec.expert_parallel:
        kwargs["enable_expert_parallel"] = True
    if (rank := spec.data_parallel) is not None:
        # One engine per rank, each its own server ("external load balancing": Serve routes among the ranks),
        # meeting at rank 0's address; the layout Ray Serve LLM's data-parallel deployments use.
        kwargs |= {"data_parallel_size": rank.size, "data_parallel_rank": rank.rank,
                   "data_parallel_address": rank.address, "data_parallel_rpc_port": rank.rpc_port}
    return kwargs


def serve_options(spec: EngineSpec) -> dict[str, Any]:
    """The engine of `spec` as a `vllm serve --config` file holds it: the engine and OpenAI-layer arguments a
    replica gives its engine."""
    options = engine_kwargs(spec) | spec.frontend_args
    return {name.replace("_", "-"): value for name, value in options.items() if value is not None}


def vllm_cli() -> None:
    """vLLM's own command line (`serve`, `bench serve`) on this process's arguments. The CPU build's `vllm` script
    dies asking the version of a distribution named vllm: this answers vllm-cpu's, as vLLM's platform check does."""
    import importlib.metadata as metadata
    import sys

    lookup = metadata.version

    def version(name: str) -> str:
        try:
            return lookup(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return lookup("vllm-cpu") + "+cpu"

    metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()


if __name__ == "__main__":  # python -m serve_app.vllm_adapter serve ... (or bench serve ...)
    vllm_cli()
