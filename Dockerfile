# wakegate: one image, two processes (see manifests/):
#   wakegate controller -c /etc/wakegate/wakegate.yaml
#   wakegate proxy --controller URL --listen 0.0.0.0:8080
# Build: docker build -t ghcr.io/wakegate/wakegate:0.1.0 .
# No secrets at build time or in the image: WAKEGATE_TOKEN comes from a Secret.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/wakegate
WORKDIR /src
# Only what the package is built from (.dockerignore lets nothing else in).
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY proxy/ proxy/
COPY common/ common/
# The runtime dependencies only: no test extras.
RUN /opt/wakegate/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/wakegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 wakegate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin wakegate
COPY --from=build /opt/wakegate /opt/wakegate
# Numeric, so that Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
# 8080: proxy (data plane); 8081: controller API.
EXPOSE 8080 8081
ENTRYPOINT ["wakegate"]
CMD ["--help"]
