# One image for every service process: api, worker, migrate (the command picks the role).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# CUDA-enabled torch for GPU workers; the CPU-only machines of this project pin torch==2.13.0 locally.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY service service
COPY store store
COPY api api
COPY worker worker
COPY cli cli
COPY client client
COPY migrations migrations
RUN pip install -e .
RUN useradd --create-home embedmix
USER embedmix
EXPOSE 8000
CMD ["embedmix", "api", "--host", "0.0.0.0", "--port", "8000"]
