# wabucketref image: the `wabucket` CLI as the entrypoint.
#
#   docker build -t ghcr.io/neuro-inc/wabucketref:v26.11.0 --build-arg VERSION=26.11.0 .
#   docker run --rm -e WANDB_API_KEY ghcr.io/neuro-inc/wabucketref:v26.11.0 --help
#
# In a platform project's registry it is kept as `wabucket` (README):
#   docker build -t wabucket:v26.11.0 --build-arg VERSION=26.11.0 .
#   apolo image push wabucket:v26.11.0 image:wabucket:v26.11.0
#
# The package is installed from the build context (not from a git URL). No secrets are
# baked in: WANDB_API_KEY and APOLO_PASSED_CONFIG come from the job's environment.
# Stages are laid out so that a source change rebuilds only small layers: the virtualenv
# with the dependencies is rebuilt only when pyproject.toml changes.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/wabucketref
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/wabucketref/bin/pip install --no-cache-dir -r /tmp/requirements.txt

FROM deps AS wheel
WORKDIR /src
# The context is filtered by .dockerignore (no tests, venvs, caches, .git, wandb/ run dirs).
COPY . ./
RUN /opt/wabucketref/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Keep VERSION's default equal to [project].version in pyproject.toml (tests/test_image.py checks).
ARG VERSION=26.11.0
LABEL org.opencontainers.image.source="https://github.com/neuro-inc/mlops-wandb-bucket-ref" \
      org.opencontainers.image.url="https://github.com/neuro-inc/mlops-wandb-bucket-ref" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.title="wabucketref" \
      org.opencontainers.image.description="wabucket CLI: artifact bytes in a Neu.ro/Apolo, S3 or local bucket; W&B keeps versions, aliases and lineage" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 wabucket \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin wabucket
COPY --from=deps /opt/wabucketref /opt/wabucketref
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/wabucketref/bin/pip install --no-cache-dir --no-deps --disable-pip-version-check /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /opt/wabucketref/bin/wabucket --version
ENV PATH=/opt/wabucketref/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /home/wabucket
ENTRYPOINT ["wabucket"]
CMD ["--help"]
