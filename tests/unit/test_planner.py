"""Capacity planner: real models' sizes, the layouts they need, and invariants of the layout search."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cluster.fit_check import FitCheck, check_config, fit_warnings
from cluster.model_shape import ModelShape, ModelShapeError, read_shape, with_precision
from cluster.planner import (GPUS, Layout, PlanError, candidate_layouts, gpu_memory, plan, stage_layers,
                             tensor_sizes)
from serve_app.config import ClusterConfig, ModelConfig
from tests.unit.model_configs import DEEPSEEK_V3, LLAMA_3_70B, QWEN2_5_7B, QWEN2_5_32B, SMOLLM2_135M

GB = 10**9
MODELS = {"deepseek-v3": DEEPSEEK_V3, "llama-3-70b": LLAMA_3_70B, "qwen2.5-32b": QWEN2_5_32B,
          "qwen2.5-7b": QWEN2_5_7B, "smollm2-135m": SMOLLM2_135M}


def write_model(root: Path, config: dict[str, Any], name: str = "model") -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def shapes(tmp_path: Path) -> dict[str, ModelShape]:
    """Every test model, read back from a config.json on disk as the CLI reads it."""
    return {name: read_shape(str(write_model(tmp_path, config, name))) for name, config in MODELS.items()}


def close(value: float, expected: float, tolerance: float) -> bool:
    return abs(value - expected) <= tolerance * expected


# --- sizes of real models ---

def test_deepseek_v3_is_671b_parameters_and_about_700_gb_in_fp8(shapes):
    shape = shapes["deepseek-v3"]
    assert close(shape.params, 671e9, 0.01)
    assert shape.weight_format == "fp8" and shape.dtype == "bf16"
    # 671 GB of FP8 layers plus bf16 embeddings: 673 GB. The published ~700 GB also holds the MTP layer.
    assert close(shape.weight_bytes, 700e9, 0.05)


def test_deepseek_v3_mla_caches_one_latent_per_layer(shapes):
    shape = shapes["deepseek-v3"]
    assert shape.kv_bytes_per_token() == 61 * (512 + 64) * 2
    # Every tensor-parallel rank keeps the whole latent.
    assert shape.kv_bytes_per_token(tensor=8) == shape.kv_bytes_per_token()
    assert with_precision(shape, kv_cache_dtype="fp8").kv_bytes_per_token() == 61 * (512 + 64)


def test_llama_3_70b_in_bf16(shapes):
    shape = shapes["llama-3-70b"]
    assert close(shape.weight_bytes, 141e9, 0.01)
    assert shape.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    # 8 KV heads over 8 ranks: one head each.
    assert shape.kv_bytes_per_token(tensor=8) == 2 * 80 * 1 * 128 * 2


def test_qwen2_5_32b_parameters(shapes):
    assert close(shapes["qwen2.5-32b"].params, 32.5e9, 0.02)


def test_smollm2_is_135m_parameters_with_tied_embeddings(shapes):
    shape = shapes["smollm2-135m"]
    assert close(shape.params, 135e6, 0.05)
    assert shape.tied_embeddings and shape.weight_format == "bf16"
    assert close(shape.weight_bytes, 2 * shape.params, 0.001)


def test_dtype_override_changes_the_weight_bytes(shapes):
    llama = shapes["llama-3-70b"]
    embeddings = 2 * llama.embedding_bytes  # stay bf16 whatever the layers' format
    assert close(with_precision(llama, "fp8").weight_bytes - embeddings, (llama.params - 2 * llama.embedding_params),
                 0.001)
    int4 = with_precision(llama, "awq").weight_bytes
    assert 35e9 < int4 < 45e9
    assert close(with_precision(shapes["deepseek-v3"], "bf16").weight_bytes, 2 * 671e9, 0.01)


# --- layouts ---

def test_deepseek_v3_does_not_fit_one_h100_node(shapes):
    result = plan(shapes["deepseek-v3"], "H100", 8192, 16, max_nodes=1)
    assert not result.fits
    assert result.layout.gpus == 8
    assert "weights alone" in result.reason and "H100" in result.reason


def test_deepseek_v3_fits_one_h200_node(shapes):
    result = plan(shapes["deepseek-v3"], "H200", 8192, 16)
    assert result.fits
    assert (result.layout.tensor, result.layout.pipeline, result.layout.nodes) == (8, 1, 1)


def test_deepseek_v3_fits_two_h100_nodes_as_tp8_pp2(shapes):
    result = plan(shapes["deepseek-v3"], "H100", 8192, 16)
    assert result.fits
    assert (result.layout.tensor, result.layout.pipeline, result.layout.nodes) == (8, 2, 2)
    assert result.per_gpu.used <= result.per_gpu.budget


def test_llama_3_70b_long_context_needs_a_second_node(shapes):
    result = plan(shapes["llama-3-70b"], "H100", 32768, 64)
    assert result.fits
    assert (result.layout.tensor, result.layout.pipeline, result.layout.nodes) == (8, 2, 2)
    assert result.kv_bytes_total == 32768 * 64 * 2 * 80 * 8 * 128 * 2
    assert any("max_position_embeddings 8192" in note for note in result.notes)


def test_smollm2_needs_one_gpu(shapes):
    result = plan(shapes["smollm2-135m"], "L4", 8192, 16)
    assert result.fits
    assert (result.layout.tensor, result.layout.pipeline, result.layout.nodes) == (1, 1, 1)


def test_tensor_parallel_respects_heads_and_kv_heads(shapes):
    assert tensor_sizes(shapes["smollm2-135m"], 8) == (1,)  # 9 heads
    assert tensor_sizes(shapes["qwen2.5-7b"], 8) == (1, 2, 4)  # 28 heads, 4 KV heads
    assert tensor_sizes(shapes["deepseek-v3"], 8) == (1, 2, 4, 8)
    assert tensor_sizes(shapes["llama-3-70b"], 6) == (1, 2)  # a TP group never spans nodes


def test_pipeline_fills_the_node_when_tensor_parallel_cannot(shapes):
    result = plan(shapes["qwen2.5-7b"], "L4", 32768, 64)
    assert result.fits
    assert result.layout.tensor == 4 and result.layout.pipeline >= 2
    assert any("tensor parallel stops at 4" in note for note in result.notes)


def test_stage_layers_split_like_vllm():
    assert [len(stage) for stage in stage_layers(61, 2)] == [31, 30]
    assert [len(stage) for stage in stage_layers(10, 4)] == [2, 3, 3, 2]
    stages = stage_layers(80, 3)
    assert [i for stage in stages for i in stage] == list(range(80))


def test_a_model_too_large_for_any_layout_says_why(shapes):
    result = plan(shapes["deepseek-v3"], "L4", 8192, 16, max_nodes=2)
    assert not result.fits
    assert "L4" in result.reason and "int4" in result.reason
    kv_bound = plan(shapes["llama-3-70b"], "H100", 10**6, 256, max_nodes=2)
    assert not kv_bound.fits and "KV cache" in kv_bound.reason


# --- invariants ---

@pytest.mark.parametrize("gpu", ["H100", "L40S", "A10G"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_more_context_never_needs_fewer_gpus(shapes, model, gpu):
    counts = []
    for context in (1024, 4096, 16384, 65536, 262144):
        result = plan(shapes[model], gpu, context, 16)
        counts.append(result.layout.gpus if result.fits else math.inf)
    assert counts == sorted(counts)


@pytest.mark.parametrize("gpu", ["H100", "A100-40G", "L4"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_chosen_layout_is_valid_and_the_smallest(shapes, model, gpu):
    shape = shapes[model]
    result = plan(shape, gpu, 16384, 32)
    if not result.fits:
        return
    layout = result.layout
    assert layout.tensor & (layout.tensor - 1) == 0 and shape.num_attention_heads % layout.tensor == 0
    assert layout.gpus <= layout.nodes * result.gpus_per_node
    assert 0 <= result.per_gpu.free
    smaller = [c for c in candidate_layouts(shape, 8, 16) if c.gpus < layout.gpus]
    assert all(gpu_memory(shape, c, 16384 * 32, GPUS[gpu.lower()], 0.9).free < 0 for c in smaller)


def test_bad_requests_name_the_fix(shapes):
    with pytest.raises(PlanError, match="H100, H200"):
        plan(shapes["smollm2-135m"], "B300", 8192, 1)
    with pytest.raises(PlanError, match="context"):
        plan(shapes["smollm2-135m"], "H100", 0, 1)


# --- finding and reading config.json ---

def test_a_repo_id_is_read_from_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--meta-llama--Meta-Llama-3-70B"
    write_model(repo / "snapshots", {**LLAMA_3_70B, "num_hidden_layers": 1}, "old")
    write_model(repo / "snapshots", LLAMA_3_70B, "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert read_shape("meta-llama/Meta-Llama-3-70B").num_layers == 80


def test_missing_models_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelShapeError, match="never downloads"):
        read_shape("org/not-cached")
    with pytest.raises(ModelShapeError, match="neither an existing directory"):
        read_shape(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ModelShapeError, match="no config.json"):
        read_shape(str(tmp_path))


def test_incomplete_or_unknown_configs_name_the_problem(tmp_path):
    partial = {k: v for k, v in LLAMA_3_70B.items() if k != "num_hidden_layers"}
    with pytest.raises(ModelShapeError, match="num_hidden_layers"):
        read_shape(str(write_model(tmp_path, partial, "partial")))
    odd = {**LLAMA_3_70B, "quantization_config": {"quant_method": "secret-sauce"}}
    with pytest.raises(ModelShapeError, match="secret-sauce"):
        read_shape(str(write_model(tmp_path, odd, "odd")))
    assert read_shape(str(write_model(tmp_path, odd, "odd2")), dtype="int4").weight_format == "int4"


def test_quantized_checkpoints_are_recognised(tmp_path):
    awq = {**LLAMA_3_70B, "torch_dtype": "float16",
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    shape = read_shape(str(write_model(tmp_path, awq, "awq")))
    assert (shape.weight_format, shape.dtype) == ("int4", "fp16")


# --- checking a declared model config ---

def model_config(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "source": "org/model", **fields})


def test_fit_warnings_flag_a_node_too_small_for_deepseek(shapes):
    shape = shapes["deepseek-v3"]
    one_node = model_config(parallelism={"tensor": 8},
                            resources={"device": "gpu", "accelerator": "H100"}, engine={"max_model_len": 32768})
    (warning,) = fit_warnings(one_node, shape)
    assert "weights need" in warning and "TP8 x PP2" in warning
    two_nodes = model_config(parallelism={"tensor": 8, "pipeline": 2},
                             resources={"device": "gpu", "accelerator": "H100"}, engine={"max_model_len": 32768})
    assert fit_warnings(two_nodes, shape) == ()
    h200 = model_config(parallelism={"tensor": 8}, resources={"device": "gpu", "accelerator": "H200"})
    assert fit_warnings(h200, shape) == ()


def test_fit_warnings_flag_a_context_the_kv_cache_cannot_hold(shapes):
    declared = model_config(parallelism={"tensor": 4}, resources={"device": "gpu", "accelerator": "L4"})
    (warning,) = fit_warnings(declared, shapes["qwen2.5-32b"])  # max_model_len defaults to 131072
    assert "max_model_len" in warning
    shorter = model_config(parallelism={"tensor": 4}, resources={"device": "gpu", "accelerator": "L4"},
                           engine={"max_model_len": 16384})
    assert fit_warnings(shorter, shapes["qwen2.5-32b"]) == ()


def test_fit_warnings_check_the_split_on_any_device(shapes):
    (warning,) = fit_warnings(model_config(parallelism={"tensor": 2}), shapes["smollm2-135m"])
    assert "9 attention heads" in warning and "1, 3, 9" in warning
    unknown = model_config(resources={"device": "gpu", "accelerator": "TPU-v5"})
    (note,) = fit_warnings(unknown, shapes["smollm2-135m"])
    assert note.startswith("memory not checked") and "H100" in note


def test_fit_warnings_use_the_engine_quantization(shapes):
    declared = model_config(parallelism={"tensor": 1}, resources={"device": "gpu", "accelerator": "H100"},
                            engine={"max_model_len": 8192})
    assert fit_warnings(declared, shapes["llama-3-70b"])  # 141 GB of bf16 on one GPU
    quantized = declared.model_copy(update={"engine": {"max_model_len": 8192, "quantization": "awq"}})
    assert fit_warnings(quantized, shapes["llama-3-70b"]) == ()


# --- expert parallelism: data-parallel ranks sharing a MoE model's experts ---

def test_routed_experts_are_almost_all_of_deepseek_v3(shapes):
    shape = shapes["deepseek-v3"]
    assert shape.is_moe and close(sum(shape.layer_expert_params), 654e9, 0.01)
    assert shape.layer_expert_params[:3] == (0, 0, 0)  # first_k_dense_replace: 3 dense layers
    assert not shapes["llama-3-70b"].is_moe


def test_ranks_hold_attention_whole_and_share_the_experts(shapes):
    shape, h100 = shapes["deepseek-v3"], GPUS["h100"]
    tokens = 16 * 8192
    eight, sixteen = (gpu_memory(shape, Layout(1, 1, ranks // 8, data=ranks, expert=True), tokens, h100, 0.9)
                      for ranks in (8, 16))
    routed = sum(shape.layer_expert_bytes(i) for i in range(shape.num_layers))
    # Doubling the ranks halves each one's experts and its share of the sequences; the rest stays whole.
    assert close(eight.weights - sixteen.weights, routed / 16, 0.001)
    assert eight.kv_cache == 2 * sixteen.kv_cache


def test_deepseek_v3_in_wide_expert_parallelism_takes_sixteen_h100s(shapes):
    result = plan(shapes["deepseek-v3"], "H100", 8192, 16, expert_parallel=True)
    assert result.fits and result.layout == Layout(1, 1, 2, data=16, expert=True)
    assert str(result.layout) == "TP1 x PP1 x DP16 with expert parallelism on 2 nodes"
    assert "DP8 with expert parallelism on 1 node" in result.reason  # eight ranks' experts overflow an H100
    assert plan(shapes["deepseek-v3"], "H200", 8192, 16, expert_parallel=True).layout.data == 8


def test_expert_parallel_planning_refuses_a_dense_model(shapes):
    with pytest.raises(PlanError, match="llama-3-70b has no experts"):
        plan(shapes["llama-3-70b"], "H100", 8192, 16, expert_parallel=True)


def wide_ep_config(**fields: Any) -> ModelConfig:
    return model_config(parallelism={"data": 16, "expert": True}, engine={"max_model_len": 32768},
                        resources={"device": "gpu", "accelerator": "H100"}, **fields)


def test_fit_warnings_size_each_rank_of_a_wide_ep_replica(shapes):
    assert fit_warnings(wide_ep_config(), shapes["deepseek-v3"]) == ()
    narrow = model_config(parallelism={"data": 8, "expert": True}, engine={"max_model_len": 32768},
                          resources={"device": "gpu", "accelerator": "H100"})
    (warning,) = fit_warnings(narrow, shapes["deepseek-v3"])
    assert "at TP1 x PP1 x DP8 with expert parallelism on H100" in warning
    assert "the planner suggests TP1 x PP1 x DP16 with expert parallelism on 2 nodes" in warning


def test_fit_warnings_name_expert_parallelism_of_a_dense_model(shapes):
    (warning,) = fit_warnings(wide_ep_config(), shapes["qwen2.5-7b"])
    assert warning.startswith("parallelism.expert is set, but") and "vLLM refuses parallelism.data > 1" in warning


# --- the command ---

def test_plan_command_prints_the_layout(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    model = write_model(tmp_path, DEEPSEEK_V3)
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(model), "--gpu", "H200"])
    assert result.exit_code == 0, result.output
    assert "TP8 x PP1 on 1 node" in result.output and "70,272" in result.output
    as_json = runner.invoke(app, ["plan", str(model), "--gpu", "H100", "--json"])
    assert json.loads(as_json.output)["layout"] == {"tensor": 8, "pipeline": 2, "nodes": 2, "data": 1, "expert": False}
    missing = runner.invoke(app, ["plan", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "error" in missing.output and "Traceback" not in missing.output
    wide = runner.invoke(app, ["plan", str(model), "--gpu", "H100", "--expert-parallel", "--json"])
    assert json.loads(wide.output)["layout"] == {"tensor": 1, "pipeline": 1, "nodes": 2, "data": 16, "expert": True}
    too_big = runner.invoke(app, ["plan", str(model), "--gpu", "L4", "--gpus-per-node", "1"])
    assert too_big.exit_code == 1 and "does not fit" in " ".join(too_big.output.split())


# --- checking a whole config, as `llmcluster validate` and `render k8s` do ---

def deepseek_cluster(source: Path, pipeline: int, **kubernetes: Any) -> ClusterConfig:
    return ClusterConfig.model_validate({
        "models": [{"name": "deepseek-v3", "source": str(source), "engine": {"max_model_len": 32768},
                    "parallelism": {"tensor": 8, "pipeline": pipeline},
                    "resources": {"device": "gpu", "accelerator": "H100"}}],
        "kubernetes": kubernetes})


def test_config_check_warns_when_a_model_cannot_fit_its_declared_gpus(tmp_path):
    source = write_model(tmp_path, DEEPSEEK_V3)
    one_node = check_config(deepseek_cluster(source, pipeline=1))
    (warning,) = one_node.warnings
    assert warning.startswith("model deepseek-v3: weights need") and "TP8 x PP2 on 2 nodes" in warning
    assert check_config(deepseek_cluster(source, pipeline=2)) == FitCheck(warnings=(), unchecked=())


def test_config_check_uses_the_node_shape_of_the_declared_pool(tmp_path):
    source = write_model(tmp_path, DEEPSEEK_V3)
    pool = {"name": "h100x4", "accelerator": "H100", "gpus_per_node": 4, "cpus": 96, "memory": "900Gi"}
    (warning,) = check_config(deepseek_cluster(source, pipeline=2, node_pools=[pool])).warnings
    assert "spans nodes of 4 GPUs" in warning


def test_config_check_names_models_it_cannot_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    cluster = deepseek_cluster(Path("deepseek-ai/DeepSeek-V3"), pipeline=1)
    fit = check_config(cluster)
    assert fit.warnings == ()
    (note,) = fit.unchecked
    assert note.startswith("model deepseek-v3: not checked") and "hf download deepseek-ai/DeepSeek-V3" in note


def test_validate_command_prints_fit_warnings_and_still_passes(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    source = write_model(tmp_path, DEEPSEEK_V3)
    config = tmp_path / "cluster.yaml"
    config.write_text(json.dumps(deepseek_cluster(source, pipeline=1).model_dump(mode="json")))
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "warning: model deepseek-v3: weights need 84.1 GB per GPU" in result.output
