# The "builder tool" image: runs mnistkit-build itself (the Argo step), talking to a
# docker-in-docker sidecar over DOCKER_HOST. Build context: the repository root.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG WHEELHOUSE_URL=
ENV PATH=/opt/mnistkit/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 LANG=C.UTF-8
RUN set -eu; \
    python3 -m venv /opt/mnistkit; \
    if [ -n "$WHEELHOUSE_URL" ]; then src="--no-index --find-links $WHEELHOUSE_URL"; else src=""; fi; \
    /opt/mnistkit/bin/pip install --no-cache-dir $src "mnistkit[build]"; \
    useradd --uid 1001 --gid 0 --create-home mnistkit; rm -rf /root/.cache /tmp/*
LABEL org.opencontainers.image.title="mnistkit-build-tool" org.opencontainers.image.licenses="Apache-2.0"
USER 1001
ENTRYPOINT ["mnistkit-build"]
CMD ["--help"]
