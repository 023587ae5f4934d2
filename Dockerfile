# The detector's image: `detector worker` by default; any other `detector` command
# (simulate, ctl, affected) with `docker run IMAGE COMMAND ...`.
# Built and run by docker-compose.yml. Not built in CI (no Docker engine there); the
# compose file is validated with `docker-compose config -q` (tests/test_deploy_config.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY detector ./detector
RUN pip install . && useradd --system --uid 10001 --no-create-home detector \
    && mkdir -p /var/lib/detector && chown detector /var/lib/detector

USER detector
ENV DETECTOR_WEB_HOST=0.0.0.0 \
    DETECTOR_WEB_PORT=6066 \
    DETECTOR_DATA_DIR=/var/lib/detector
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=2)"
ENTRYPOINT ["detector"]
CMD ["worker"]
