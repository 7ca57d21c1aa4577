# syntax=docker/dockerfile:1
# authz-sidecar: the runtime image. The runtime distribution only (sidecar/): the same image runs
# the bundle server and the decision-log receiver (entry points authz-bundle-server,
# authz-decision-log-receiver). The local stack, dev CA and demo upstream are devstack/, built by
# devstack/Dockerfile. Non-root (uid 65532) and fine with a read-only root filesystem (it writes
# nothing outside /tmp; the Helm chart mounts an emptyDir there and drops every capability).
#
# Reproducible: one commit, one base digest and one SOURCE_DATE_EPOCH give the same image.
#   docker buildx build \
#     --build-arg PYTHON_BASE=python:3.11-slim-bookworm@sha256:<digest> \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --output type=image,name=authz-sidecar:0.1.0,rewrite-timestamp=true .
# - the base is pinned by digest. PYTHON_BASE's default below is a placeholder (an all-zero
#   digest no registry has), so a build fails until you choose the base: pass the digest you
#   tested (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints the current one);
# - every Python package is pinned by hash (requirements/*.lock, `pip install --require-hashes`);
# - SOURCE_DATE_EPOCH sets the SBOM's timestamp and, with rewrite-timestamp, every file's mtime;
#   nothing is cached between builds (pip's cache is off, no apt-get, no downloads but pip's).
# The build stage writes a CycloneDX SBOM of the installed environment (cyclonedx-py), shipped at
# /usr/share/doc/authz-sidecar/sbom.cdx.json. Signing and attesting a published image with
# cosign: docs/helm.md, "The image".

ARG PYTHON_BASE=python:3.11-slim-bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000

FROM ${PYTHON_BASE} AS build
ARG SOURCE_DATE_EPOCH=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
WORKDIR /src
COPY requirements/runtime.lock requirements/build.lock requirements/sbom.lock ./requirements/
# xds-protos carries an old copy of OpenTelemetry's protos in the files opentelemetry-proto installs:
# those are written again, last, from the same hash-pinned lock (the OTLP exporter needs them).
RUN python -m venv /opt/authz-sidecar \
 && /opt/authz-sidecar/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock -r requirements/build.lock \
 && grep -A2 '^opentelemetry-proto==' requirements/runtime.lock > requirements/otel-proto.lock \
 && /opt/authz-sidecar/bin/pip install --require-hashes --no-deps --force-reinstall -r requirements/otel-proto.lock
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# The package itself: its dependencies are already in (pinned above), its build tools leave after.
# Then every module's bytecode, written again as hash-based .pyc (PEP 552): the same bytes in every
# build whatever the files' times, and the image runs read-only with PYTHONDONTWRITEBYTECODE, so
# without them each start would compile every module it imports again (measured from a venv: ~0.7 s
# of CPU and 2 MB more RSS for serve's imports, 6 MB with the response path's grpc and protos).
RUN /opt/authz-sidecar/bin/pip install --no-deps --no-build-isolation . \
 && /opt/authz-sidecar/bin/pip uninstall --yes setuptools wheel \
 && find /opt/authz-sidecar -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/authz-sidecar/bin/python -m compileall -q -j 0 --invalidation-mode checked-hash /opt/authz-sidecar/lib
# The SBOM, from a separate venv so that the generator is not part of what it describes.
RUN python -m venv /opt/sbom \
 && /opt/sbom/bin/pip install --require-hashes --no-deps -r requirements/sbom.lock \
 && mkdir -p /sbom \
 && /opt/sbom/bin/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible --of JSON \
      -o /sbom/sbom.cdx.json /opt/authz-sidecar/bin/python

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="authz-sidecar" \
      org.opencontainers.image.description="OPA-backed Envoy ext_authz sidecar for AI agents"
COPY --from=build /opt/authz-sidecar /opt/authz-sidecar
COPY --from=build /sbom/sbom.cdx.json /usr/share/doc/authz-sidecar/sbom.cdx.json
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
