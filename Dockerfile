# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE create|worker|dashboard|status ...`.
FROM python:3.11-slim

# For NVIDIA GPUs build with --build-arg EXTRA_PIP_PACKAGES="tensorflow[and-cuda]":
# TensorFlow's wheels then bring their own CUDA and cuDNN, so the host needs only the
# driver and the NVIDIA Container Toolkit (see docker-compose.gpu.yml).
ARG EXTRA_PIP_PACKAGES=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KERAS_BACKEND=tensorflow \
    HPO_CACHE=/cache \
    KERAS_HOME=/cache/keras

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a name lookup.
RUN groupadd --system --gid 10001 hpo \
 && useradd --system --uid 10001 --gid hpo --create-home --home-dir /home/hpo \
        --shell /usr/sbin/nologin hpo

# Only what the build needs, so editing tests or studies does not reinstall TensorFlow.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hpo/ hpo/
# EXTRA_PIP_PACKAGES is left unquoted on purpose: empty means nothing, several words
# mean several packages.
RUN pip install --no-cache-dir . ${EXTRA_PIP_PACKAGES} \
 && rm -rf /src

# /app is writable so that commands which write into the working directory (reports,
# exports) work; the study files themselves stay root-owned. /artifacts is where
# docker-compose.yml and the Kubernetes manifests mount the shared artifact store
# (--artifacts); creating it here gives a fresh named volume the right owner.
RUN mkdir -p /app /cache /artifacts \
 && chown hpo:hpo /app /cache /artifacts
WORKDIR /app
COPY studies/ studies/

USER 10001:10001
# Decoded data set arrays are cached here (HPO_CACHE); workers on one host may share it:
# hpo serialises the first decode with a file lock and writes the cache atomically.
VOLUME ["/cache"]

ENTRYPOINT ["hpo"]
CMD ["--help"]
