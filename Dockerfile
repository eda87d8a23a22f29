# syntax=docker/dockerfile:1
# bonn-serve runtime image: the XNOR engine + BentoML service. The runtime stage has no compiler and no torch.
#   docker build -t bonn-serve .
#   docker buildx build --platform linux/amd64,linux/arm64 -t bonn-serve .   (multi-arch; see docs/serving.md)
#   docker run --rm -p 3000:3000 bonn-serve

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY bonn_serve/ bonn_serve/
COPY training/ training/
# The engine's ISA kernels are chosen at run time, so one wheel per architecture serves every CPU of it.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/home/bonn/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    BONN_HOST=0.0.0.0 \
    BONN_PORT=3000 \
    BONN_MODELS_DIR=/app/models \
    BONN_WORKERS=1 \
    BONN_THREADS="" \
    BONN_MAX_BATCH=32 \
    BONN_MAX_WAIT_MS=0 \
    BONN_MAX_BODY_BYTES=8388608
RUN useradd --create-home --no-log-init --uid 10001 --shell /usr/sbin/nologin bonn
# The wheel and its runtime dependencies only: numpy, pillow, bentoml, onnxruntime, prometheus-client.
COPY --from=build /dist/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import importlib.util as u, bonn_serve._engine, bonn_serve.service; assert u.find_spec('torch') is None"
WORKDIR /app
COPY --chown=10001:10001 models/ /app/models/
USER 10001:10001
# Register the shipped models at build time so the container starts serving at once (serve re-checks them).
RUN if ls /app/models/*.bonn >/dev/null 2>&1; then bonn-serve register /app/models; fi
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "bonn_serve.healthcheck"]
ENTRYPOINT ["bonn-serve", "serve"]
