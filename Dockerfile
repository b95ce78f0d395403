# pilegate gateway image.
# Ports: 8080 ops HTTP API (/healthz, /readyz, /metrics, /api),
#        9000 OCPP-J WebSocket (ws://HOST:9000/ocpp/{pileId}),
#        9010 cloud-board CBP/1 TCP.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY protocol ./protocol
COPY pileid ./pileid
COPY sessions ./sessions
COPY simulators ./simulators
COPY firmware ./firmware
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 pilegate \
    && mkdir -p /var/lib/pilegate && chown pilegate /var/lib/pilegate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER pilegate
WORKDIR /var/lib/pilegate
ENV PILEGATE_DATABASE_URL=sqlite+aiosqlite:////var/lib/pilegate/pilegate.db \
    PILEGATE_API_HOST=0.0.0.0 \
    PILEGATE_LOG_FORMAT=json
EXPOSE 8080 9000 9010
VOLUME ["/var/lib/pilegate"]
HEALTHCHECK --interval=15s --timeout=3s \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
# PILEGATE_API_TOKEN must be provided at run time (docker run -e / compose).
CMD ["pilegate", "serve"]
