"""What the benchmark asks of vLLM: the runs of a plan, `vllm bench serve` arguments its parser accepts, and the
raw server's engine arguments equal to a replica's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.bench.servers import Kind, System, parse_systems
from cluster.bench.workloads import client_args, plan_runs, standard_workloads, warmup_run
from serve_app.config import ModelConfig, load_config
from serve_app.llm_server import engine_spec
from serve_app.vllm_adapter import engine_kwargs, serve_options
from tests.conftest import REPO_ROOT

WORKLOADS = standard_workloads(input_len=128, output_len=64, prefix_len=512)


def test_every_run_has_its_own_seed_and_both_systems_get_the_same_runs() -> None:
    runs = plan_runs(list(WORKLOADS.values()), [1, 8, 32], repeats=3, seed=1000)
    assert len(runs) == 2 * 3 * 3
    assert len({run.seed for run in runs}) == len(runs)
    assert 1000 not in {run.seed for run in runs}  # the warm-up's
    assert runs == plan_runs(list(WORKLOADS.values()), [1, 8, 32], repeats=3, seed=1000)
    assert [run.repeat for run in runs[:6]] == [1] * 6  # repeats outermost: drift spreads over every point
    assert warmup_run(list(WORKLOADS.values()), [1, 8, 32], 1000, prompts=64).seed == 1000


def test_prompts_grow_with_concurrency_and_fill_whole_prefix_groups() -> None:
    random, prefix = WORKLOADS["random"], WORKLOADS["prefix"]
    assert [run.prompts for run in plan_runs([random], [1, 8, 32], 1, 0)] == [16, 32, 128]
    assert [run.prompts for run in plan_runs([prefix], [1], 1, 0, prompts=10)] == [12]  # 4 prefixes x 3
    assert [run.prompts for run in plan_runs([prefix], [1], 1, 0, prompts=3)] == [3]  # 3 prefixes x 1
    assert "--prefix-repetition-num-prefixes" in (args := prefix.dataset_args(3)) and args[args.index(
        "--prefix-repetition-num-prefixes") + 1] == "3"


@pytest.fixture(scope="module")
def bench_parser():
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return parser


@pytest.mark.parametrize("workload", ["random", "prefix"])
def test_vllms_benchmark_client_reads_the_arguments_as_meant(bench_parser, workload: str, tmp_path: Path) -> None:
    [run] = plan_runs([WORKLOADS[workload]], [8], 1, seed=7)
    args = client_args(run, "http://127.0.0.1:9", "smollm2", "/models/smollm2", tmp_path / "r.json")
    assert args[:2] == ["bench", "serve"]
    parsed = bench_parser.parse_args(args[2:])
    assert (parsed.base_url, parsed.endpoint, parsed.model, parsed.tokenizer) == (
        "http://127.0.0.1:9", "/v1/completions", "smollm2", "/models/smollm2")
    assert (parsed.num_prompts, parsed.max_concurrency, parsed.seed, parsed.ignore_eos) == (32, 8, 8, True)
    assert (parsed.save_result, parsed.result_dir, parsed.result_filename) == (True, str(tmp_path), "r.json")
    assert parsed.metric_percentiles == "50,90,99" and "itl" in parsed.percentile_metrics
    if workload == "random":
        assert (parsed.dataset_name, parsed.random_input_len, parsed.random_output_len) == ("random", 128, 64)
    else:
        assert (parsed.dataset_name, parsed.prefix_repetition_prefix_len, parsed.prefix_repetition_suffix_len,
                parsed.prefix_repetition_num_prefixes, parsed.prefix_repetition_output_len) == (
            "prefix_repetition", 512, 128, 4, 64)


def cpu_tensor_parallel_model() -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "tiny", "aliases": ["t"], "source": "/models/tiny", "parallelism": {"tensor": 2},
        "engine": {"dtype": "float32", "enforce_eager": False, "max_num_seqs": 8, "compilation_config": {"mode": 0}},
        "frontend": {"chat_template_content_format": "openai"}, "resources": {"device": "cpu"}})


@pytest.mark.parametrize("model", [load_config(REPO_ROOT / "configs" / "local.yaml").models[0],
                                   cpu_tensor_parallel_model()], ids=["local", "cpu-tp2"])
def test_raw_vllm_serve_gets_the_engine_and_frontend_arguments_a_replica_gives_its_engine(model: ModelConfig,
                                                                             tmp_path: Path) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    spec = engine_spec(model, "/models/m", allowed_cores=[0, 1])
    options = tmp_path / "serve.yaml"
    options.write_text(yaml.safe_dump(serve_options(spec)))
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(["--config", str(options)])
    served = AsyncEngineArgs.from_cli_args(parsed)
    for name, value in engine_kwargs(spec).items():
        assert same(getattr(served, name), value), name
    assert spec.frontend_args and all(getattr(parsed, name) == value for name, value in spec.frontend_args.items())


def same(parsed: object, given: object) -> bool:
    """`parsed` (vLLM turns a dict argument into its config class) holds what `given` says."""
    if isinstance(given, dict):
        return all(same(parsed[key] if isinstance(parsed, dict) else getattr(parsed, key), value)
                   for key, value in given.items())
    return parsed == given


def test_systems_are_named_by_kind_and_by_config_when_they_bring_their_own() -> None:
    default = Path("configs/local.yaml")
    assert parse_systems("vllm,llmcluster", default) == [System("vllm", Kind.VLLM, default),
                                                         System("llmcluster", Kind.LLMCLUSTER, default)]
    assert [s.label for s in parse_systems("llmcluster:a/p2c.yaml, llmcluster:b/prefix.yaml", default)] == [
        "llmcluster:p2c", "llmcluster:prefix"]
    for bad in ("", "sglang", "vllm,vllm"):
        with pytest.raises(ValueError):
            parse_systems(bad, default)
