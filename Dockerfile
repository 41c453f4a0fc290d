# syntax=docker/dockerfile:1
# The ollama-gitops image: the `ollama-gitops` command (reconcile, api, serve, validate, status), which
# manifests/ runs as `reconcile` and `api`.
#
#   docker build -t ghcr.io/example/ollama-gitops:0.1.0 .
#
# The base image is pinned by tag and by the digest of its multi-architecture index, so a rebuild
# takes the same Python and Debian; to update, change both (docker buildx imagetools inspect <tag>).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# What the package is built from: reconciler/data/ links to schemas/ and examples/models-repo/,
# whose files the wheel carries; setup.cfg reads README.md.
COPY pyproject.toml setup.cfg README.md ./
COPY schemas/ schemas/
COPY examples/models-repo/ examples/models-repo/
COPY reconciler/ reconciler/
COPY api/ api/
COPY ollama_gitops/ ollama_gitops/
# A virtual environment without pip: only ollama-gitops and what it depends on go into the image.
RUN python -m venv --without-pip /opt/ollama-gitops \
 && pip --python /opt/ollama-gitops/bin/python install . \
 && /opt/ollama-gitops/bin/ollama-gitops --version

FROM ${PYTHON_IMAGE}
# git: every fetch and push runs it; openssh-client: for ssh:// repositories. Not pinned to versions:
# Debian's security updates replace them, and the base image's digest already fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
 && rm -rf /var/lib/apt/lists/*
# A user with a passwd entry (ssh refuses to run for a uid without one) and a state directory it
# owns. Kubernetes mounts an emptyDir there; `docker run` gets a writable directory as it is.
RUN groupadd --system --gid 65532 ollama-gitops \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/ollama-gitops --create-home \
      --shell /usr/sbin/nologin ollama-gitops \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/ollama-gitops
COPY --from=builder /opt/ollama-gitops /opt/ollama-gitops
# Bytecode was compiled at install: nothing is written next to the code, so the root filesystem can
# be read-only.
ENV PATH=/opt/ollama-gitops/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ollama-gitops \
    OLLAMA_GITOPS_STATE_DIR=/var/lib/ollama-gitops
LABEL org.opencontainers.image.title="ollama-gitops" \
      org.opencontainers.image.description="GitOps reconciler for Ollama models" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
WORKDIR /home/ollama-gitops
EXPOSE 8082
ENTRYPOINT ["ollama-gitops"]
# The reconciler and the API in one process. Without OLLAMA_GITOPS_API_KEY the API listens on the
# container's loopback only: pass a key (docker run -e OLLAMA_GITOPS_API_KEY=... -p 8082:8082).
CMD ["serve"]
