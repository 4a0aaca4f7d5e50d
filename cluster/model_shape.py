"""A model's size as serving sees it, read from its Hugging Face config.json: parameters, weight and KV bytes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

# Bytes one parameter takes in each weight format. Four-bit formats (AWQ, GPTQ) also keep a 16-bit scale and
# a 4-bit zero point per group of 128 weights, their default group size: 2.5 bytes more per 128 weights.
# FP8 checkpoints keep one fp32 scale per 128x128 block or per channel: under 0.1%, left out.
BYTES_PER_PARAM = MappingProxyType({
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.5 / 128})
UNQUANTIZED = ("fp32", "bf16", "fp16")
KV_CACHE_FORMATS = ("fp32", "bf16", "fp16", "fp8")
# Other spellings of those formats: config.json dtypes, vLLM's --dtype, --quantization and --kv-cache-dtype.
FORMAT_ALIASES = MappingProxyType({
    "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "fbgemm_fp8": "fp8", "ptpc_fp8": "fp8", "modelopt": "fp8",
    "awq": "int4", "gptq": "int4", "awq_marlin": "int4", "gptq_marlin": "int4", "mxfp4": "int4",
    "modelopt_fp4": "int4"})
HF_REPO_DIR_PREFIX = "models--"


class ModelShapeError(ValueError):
    """A model whose config.json cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know of a model: its parameters layer by layer, its attention and its formats."""

    name: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    layer_params: tuple[int, ...]  # per decoder layer, in order: MoE models mix dense and expert layers
    layer_expert_params: tuple[int, ...]  # of those, the routed experts': what expert parallelism spreads
    embedding_params: int
    tied_embeddings: bool
    mla_latent_dim: int | None  # multi-head latent attention caches one latent of this width per token
    mlp_width: int  # widest MLP activation of one token, for the activation reserve
    max_position_embeddings: int | None
    dtype: str  # activations, embeddings and unquantized weights
    weight_format: str  # the decoder layers' weights: dtype, or a quantized format
    kv_cache_dtype: str | None = None  # None is vLLM's "auto": the same as dtype

    @property
    def params(self) -> int:
        head = 0 if self.tied_embeddings else self.embedding_params
        return sum(self.layer_params) + self.embedding_params + head

    @property
    def kv_format(self) -> str:
        return self.kv_cache_dtype or self.dtype

    @property
    def is_moe(self) -> bool:
        return any(self.layer_expert_params)

    def layer_bytes(self, index: int) -> float:
        return self.layer_params[index] * BYTES_PER_PARAM[self.weight_format]

    def layer_expert_bytes(self, index: int) -> float:
        return self.layer_expert_params[index] * BYTES_PER_PARAM[self.weight_format]

    @property
    def embedding_bytes(self) -> float:
        # Embeddings and the output head stay unquantized in FP8, AWQ and GPTQ checkpoints alike.
        return self.embedding_params * BYTES_PER_PARAM[self.dtype]

    @property
    def weight_bytes(self) -> float:
        tables = 1 if self.tied_embeddings else 2
        return sum(map(self.layer_bytes, range(self.num_layers))) + tables * self.embedding_bytes

    def kv_bytes_per_token(self, layers: int | None = None, tensor: int = 1) -> int:
        """KV-cache bytes of one token on one GPU holding `layers` layers (default all) at tensor parallel `tensor`."""
        layers = self.num_layers if layers is None else layers
        if self.mla_latent_dim:
            # One latent (plus its rotary part) serves every head, so no K/V pair, and each TP rank keeps it whole.
            width = self.mla_latent_dim
        else:
            # K and V; with fewer KV heads than ranks, vLLM replicates a head on several ranks.
            width = 2 * -(-self.num_kv_heads // tensor) * self.head_dim
        return layers * width * int(BYTES_PER_PARAM[self.kv_format])


def normalize_format(name: str, allowed: tuple[str, ...] = tuple(BYTES_PER_PARAM)) -> str:
    """The canonical name of a weight or cache format ("bfloat16" -> "bf16", "awq" -> "int4")."""
    key = name.strip().lower()
    canonical = FORMAT_ALIASES.get(key, key)
    if canonical not in allowed:
        four_bit = " (awq and gptq count as int4)" if "int4" in allowed else ""
        raise ModelShapeError(f"unknown format {name!r}; use one of {', '.join(allowed)}{four_bit}")
    return canonical


def with_precision(shape: ModelShape, dtype: str | None = None, kv_cache_dtype: str | None = None) -> ModelShape:
    """`shape` served in another format: an unquantized dtype (bf16, fp16, fp32) or a quantization (fp8, int4...)."""
    if dtype and dtype != "auto":
        fmt = normalize_format(dtype)
        if fmt in UNQUANTIZED:
            shape = replace(shape, dtype=fmt, weight_format=fmt)
        else:
            shape = replace(shape, weight_format=fmt)
    if kv_cache_dtype and kv_cache_dtype != "auto":
        shape = replace(shape, kv_cache_dtype=normalize_format(kv_cache_dtype, KV_CACHE_FORMATS))
    return shape


def read_shape(model: str, dtype: str | None = None, kv_cache_dtype: str | None = None) -> ModelShape:
    """The shape of `model`: a local directory, a config.json, builtin:<name>, or a repo id in the local HF cache."""
    path = find_config(model)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelShapeError(f"{path} is not a model config (a JSON object)")
    if dtype and dtype != "auto":
        # The format asked for replaces the checkpoint's, even a quantization the planner does not know.
        config = {key: value for key, value in config.items() if key != "quantization_config"}
    return with_precision(shape_from_config(config, model), dtype, kv_cache_dtype)


def find_config(model: str) -> Path:
    """Where the config.json of `model` lies on this machine; never downloads."""
    if model.startswith("builtin:"):
        return _builtin_config(model.removeprefix("builtin:"))
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelShapeError(f"{model} holds no config.json; give the directory of a Hugging Face model")
        return path / "config.json"
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ModelShapeError(f"{model!r} is neither an existing directory nor a Hugging Face repo id (org/name)")
    return _cached_config(model)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, located as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _cached_config(repo_id: str) -> Path:
    repo_dir = hf_hub_cache() / (HF_REPO_DIR_PREFIX + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    preferred = repo_dir / "snapshots" / ref.read_text().strip() / "config.json" if ref.is_file() else None
    if preferred and preferred.is_file():
        return preferred
    found = sorted(repo_dir.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ModelShapeError(
            f"no config.json for {repo_id} in the Hugging Face cache {hf_hub_cache()}; the planner never "
            f"downloads: fetch it with `hf download {repo_id} config.json` or give a local directory")
    return found[-1]


def _builtin_config(name: str) -> Path:
    from serve_app.model_source import BUILTIN_MODELS, builtin_dir, default_cache_dir

    if name not in BUILTIN_MODELS:
        raise ModelShapeError(f"unknown builtin model {name!r}; builtin models: {', '.join(BUILTIN_MODELS)}")
    path = builtin_dir(name, default_cache_dir()) / "config.json"
    if not path.is_file():
        # Converting needs transformers and takes a while; planning should not do it behind the user's back.
        raise ModelShapeError(f"builtin model {name} is not converted yet; `llmcluster serve` converts it on first use")
    return path


def shape_from_config(config: dict[str, Any], name: str) -> ModelShape:
    """The shape described by a Hugging Face config.json, already parsed."""
    # Multimodal configs nest the language model; the vision tower is small next to it and left out.
    config = {**config, **(config.get("text_config") or {})}
    try:
        return _shape(config, name)
    except KeyError as exc:
        raise ModelShapeError(f"{name}: config.json has no {exc.args[0]!r}, which sizing needs") from None
    except ModelShapeError as exc:
        raise ModelShapeError(f"{name}: {exc}") from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelShapeError(f"{name}: config.json does not describe a decoder the planner knows: {exc}") from None


def _shape(config: dict[str, Any], name: str) -> ModelShape:
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    mla = config.get("kv_lora_rank") is not None
    attention = _mla_params(config, hidden, heads) if mla else _attention_params(hidden, heads, kv_heads, head_dim)
    # num_nextn_predict_layers (DeepSeek-V3's multi-token-prediction layer, about 14B parameters) is left
    # out: vLLM loads it only for speculative decoding, and then as a separate draft model.
    layers = tuple(attention + 2 * hidden + _mlp_params(config, hidden, i)
                   for i in range(int(config["num_hidden_layers"])))
    experts = tuple(_routed_expert_params(config, hidden, i) for i in range(len(layers)))
    dtype = _checkpoint_dtype(config)
    return ModelShape(
        name=name, hidden_size=hidden, num_layers=len(layers), num_attention_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=int(config["vocab_size"]), layer_params=layers, layer_expert_params=experts,
        embedding_params=int(config["vocab_size"]) * hidden,
        # Model classes disagree on the default; counting a separate head errs on the safe side.
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        mla_latent_dim=int(config["kv_lora_rank"]) + int(config["qk_rope_head_dim"]) if mla else None,
        mlp_width=_mlp_width(config), max_position_embeddings=config.get("max_position_embeddings"),
        dtype=dtype, weight_format=_checkpoint_quantization(config) or dtype)


def _attention_params(hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    # Q and O span every head, K and V only the KV heads (GQA). Biases (Qwen2's QKV) are under 0.01%.
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim


def _mla_params(config: dict[str, Any], hidden: int, heads: int) -> int:
    """DeepSeek-V2/V3 multi-head latent attention: low-rank Q and KV projections through small latents."""
    q_lora, kv_lora = config.get("q_lora_rank"), int(config["kv_lora_rank"])
    rope, nope, v_dim = int(config["qk_rope_head_dim"]), int(config["qk_nope_head_dim"]), int(config["v_head_dim"])
    q_head = heads * (nope + rope)
    # Without q_lora_rank (V2-Lite) queries come from one full projection.
    query = hidden * q_lora + q_lora + q_lora * q_head if q_lora else hidden * q_head
    kv = hidden * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + v_dim)
    return query + kv + heads * v_dim * hidden


def _mlp_params(config: dict[str, Any], hidden: int, layer: int) -> int:
    # Gated MLPs (SwiGLU and kin): gate, up and down projections.
    if not _is_moe_layer(config, layer):
        return 3 * hidden * int(config["intermediate_size"])
    routed, width, shared = _experts(config)
    router = routed * hidden
    return 3 * hidden * (routed * width + shared) + router


def _routed_expert_params(config: dict[str, Any], hidden: int, layer: int) -> int:
    if not _is_moe_layer(config, layer):
        return 0
    routed, width, _ = _experts(config)
    return 3 * hidden * routed * width


def _experts(config: dict[str, Any]) -> tuple[int, int, int]:
    """(routed experts, width of one, total width of the always-on shared experts) of a MoE model."""
    routed = int(config.get("n_routed_experts") or config.get("num_local_experts") or config.get("num_experts") or 0)
    width = int(config.get("moe_intermediate_size") or config["intermediate_size"])  # Mixtral reuses the latter
    shared = int(config.get("n_shared_experts") or 0) * width + int(config.get("shared_expert_intermediate_size") or 0)
    return routed, width, shared


def _is_moe_layer(config: dict[str, Any], layer: int) -> bool:
    if not _experts(config)[0] or layer in (config.get("mlp_only_layers") or ()):
        return False
    if "first_k_dense_replace" in config or "moe_layer_freq" in config:  # DeepSeek's rule
        return layer >= int(config.get("first_k_dense_replace") or 0) and layer % int(
            config.get("moe_layer_freq") or 1) == 0
    return (layer + 1) % int(config.get("decoder_sparse_step") or 1) == 0  # Qwen-MoE's rule; Mixtral: every layer


def _mlp_width(config: dict[str, Any]) -> int:
    dense = int(config.get("intermediate_size") or 0)
    routed, width, shared = _experts(config)
    if not routed:
        return dense
    # Each token passes through its top-k experts at once, so their widths add up.
    return max(dense, int(config.get("num_experts_per_tok") or 1) * width + shared)


def _checkpoint_dtype(config: dict[str, Any]) -> str:
    name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    dtype = normalize_format(name, UNQUANTIZED)
    # vLLM's dtype "auto" serves float32 checkpoints in bfloat16.
    return "bf16" if dtype == "fp32" else dtype


def _checkpoint_quantization(config: dict[str, Any]) -> str | None:
    """The weight format a quantized checkpoint declares in quantization_config, or None if it is not quantized."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method in ("awq", "gptq"):
        return "int4" if int(quant.get("bits", 4)) <= 4 else "int8"
    if method == "bitsandbytes":
        return "int4" if quant.get("load_in_4bit") else "int8"
    if method == "compressed-tensors":
        weights = next(iter((quant.get("config_groups") or {}).values()), {}).get("weights") or {}
        bits, kind = int(weights.get("num_bits", 8)), weights.get("type", "int")
        return "int4" if bits <= 4 else ("fp8" if kind == "float" else "int8")
    try:
        return normalize_format(method)
    except ModelShapeError:
        raise ModelShapeError(f"quantization_config.quant_method {method!r} is unknown to the planner; "
                              f"give the weight format yourself (dtype: {', '.join(BYTES_PER_PARAM)})") from None
