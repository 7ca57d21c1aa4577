# syntax=docker/dockerfile:1
# authz-sidecar: a slim, non-root image. Build: docker build -t authz-sidecar:0.1.0 .
# The runtime distribution only (sidecar/): the same image runs the bundle server and the
# decision-log receiver (entry points authz-bundle-server, authz-decision-log-receiver). The
# local stack, dev CA and demo upstream are devstack/, built by devstack/Dockerfile.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/authz-sidecar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN /opt/authz-sidecar/bin/pip install . \
 && find /opt/authz-sidecar -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="authz-sidecar" \
      org.opencontainers.image.description="OPA-backed Envoy ext_authz sidecar for AI agents"
COPY --from=build /opt/authz-sidecar /opt/authz-sidecar
# Where the decision-log receiver writes in docker-compose.yml (a named volume takes this owner).
RUN mkdir -p /var/log/authz && chown 65532:65532 /var/log/authz
ENV PATH=/opt/authz-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it; no shell, no home.
USER 65532:65532
EXPOSE 9191 9192
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9192/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["authz-sidecar"]
CMD ["serve", "--config", "/etc/authz-sidecar/sidecar.yaml"]
