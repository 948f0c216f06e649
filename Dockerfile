# One image for every role: `docker run IMAGE create|worker|dashboard|status ...`.
# No `# syntax=` line: BuildKit would pull that frontend image from Docker Hub, which a
# host behind a private registry cannot do, and nothing here needs it.

# The base image. Behind a private registry, or with no registry at all, pass another
# one: --build-arg PYTHON_IMAGE=registry.example.com/python:3.11-slim (docker-compose.yml
# takes it from HPO_PYTHON_IMAGE; deploy/images/python/ builds a local stand-in).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# For NVIDIA GPUs build with --build-arg EXTRA_PIP_PACKAGES="tensorflow[and-cuda]":
# TensorFlow's wheels then bring their own CUDA and cuDNN, so the host needs only the
# driver and the NVIDIA Container Toolkit (see docker-compose.gpu.yml).
ARG EXTRA_PIP_PACKAGES=""
# pip's own settings, unset unless passed: a private package index (PIP_INDEX_URL), or a
# folder of wheels served over HTTP (PIP_FIND_LINKS, PIP_NO_INDEX=1, PIP_TRUSTED_HOST), as
# deploy/compose-check.sh does on a host whose containers cannot reach PyPI. They are
# visible in `docker history`: put no password in them.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KERAS_BACKEND=tensorflow \
    HPO_CACHE=/cache \
    KERAS_HOME=/cache/keras

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a name lookup.
# /app is writable so that commands which write into the working directory (reports,
# exports) work. /artifacts is where docker-compose.yml and the Kubernetes manifests
# mount the shared artifact store (--artifacts); creating it here gives a fresh named
# volume the right owner.
RUN groupadd --system --gid 10001 hpo \
 && useradd --system --uid 10001 --gid hpo --create-home --home-dir /home/hpo \
        --shell /usr/sbin/nologin hpo \
 && mkdir -p /app /cache /artifacts \
 && chown hpo:hpo /app /cache /artifacts
# Decoded data set arrays are cached here (HPO_CACHE); workers on one host may share it:
# hpo serialises the first decode with a file lock and writes the cache atomically.
VOLUME ["/cache"]
ENTRYPOINT ["hpo"]
CMD ["--help"]
WORKDIR /app

# Layers from the least to the most often changed. The dependencies first, read from
# pyproject.toml alone, so that editing hpo's code (the last layers) does not reinstall
# TensorFlow. EXTRA_PIP_PACKAGES is left unquoted on purpose: empty means nothing,
# several words mean several packages.
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /src/requirements.txt \
 && pip install --no-cache-dir -r /src/requirements.txt ${EXTRA_PIP_PACKAGES}

# The study files are root-owned: read, never written, by hpo.
COPY studies/ studies/
COPY README.md /src/
COPY hpo/ /src/hpo/
RUN pip install --no-cache-dir --no-deps /src \
 && rm -rf /src

USER 10001:10001
