# One image for the API and both workers. The CUDA build of torch is pinned in pyproject.toml.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY api api
COPY workers workers
COPY recall recall
COPY rerank rerank
COPY cli cli
COPY migrations migrations
RUN pip install --quiet . && useradd --create-home umarvel
USER umarvel
CMD ["umarvel", "--help"]
