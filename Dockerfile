# The worker image: the GPU workers and beat (the API and the migration run Dockerfile.api).
# A CUDA base of the same release as the pinned torch build (torch 2.14.1 is built with CUDA
# 13.0; its wheels bring their own cuDNN), so the image states the driver it needs: one
# that supports CUDA 13.0.
FROM nvidia/cuda:13.0.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common curl \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv $VIRTUAL_ENV

WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY client client
COPY core core
COPY store store
COPY media media
COPY mllm mllm
COPY recall recall
COPY rerank rerank
COPY queries queries
COPY ingestion ingestion
COPY evaluation evaluation
COPY devkit devkit
COPY api api
COPY workers workers
COPY cli cli
COPY migrations migrations
# The HTTP client is a distribution of its own that the server depends on: one pip command
# installs both, ./client taken from here, with the worker extra (the model stack) and every
# runtime distribution at the version of constraints.txt.
RUN pip install --quiet -c constraints.txt ./client '.[worker,tracing]' \
    && useradd --create-home --uid 10001 umarvel \
    && mkdir -p /data/media /models /tmp/prometheus \
    && chown umarvel /data/media /models /tmp/prometheus
USER umarvel
CMD ["umarvel", "--help"]
