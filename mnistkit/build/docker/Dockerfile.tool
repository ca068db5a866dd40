# The build tool: runs mnistkit-build (the Argo step) against a docker engine given by
# DOCKER_HOST (the pod's docker-in-docker sidecar). CPU torch and onnx export the model to ONNX
# here, as on a laptop; no seldon-core: the model image is built by the s2i builder it pulls. Built offline by `mnistkit-build builder --tool`.
ARG BASE_IMAGE=mnistkit/base:bookworm
FROM ${BASE_IMAGE}
ARG WHEELHOUSE_URL
ENV PATH=/opt/mnistkit/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 LANG=C.UTF-8
COPY requirements.txt /tmp/requirements.txt
RUN set -eu; \
    python3 -m venv /opt/mnistkit; \
    /opt/mnistkit/bin/pip install --no-cache-dir --no-index --find-links "$WHEELHOUSE_URL" -r /tmp/requirements.txt mnistkit; \
    sp=$(echo /opt/mnistkit/lib/python3*/site-packages); \
    rm -rf "$sp"/torch/include "$sp"/torch/share/cmake "$sp"/torch/lib/*.a "$sp"/torch/test "$sp"/caffe2; \
    useradd --uid 1001 --gid 0 --create-home mnistkit; rm -rf /root/.cache /tmp/*
LABEL org.opencontainers.image.title="mnistkit-build-tool" org.opencontainers.image.licenses="Apache-2.0"
USER 1001
WORKDIR /home/mnistkit
ENTRYPOINT ["mnistkit-build"]
CMD ["--help"]
