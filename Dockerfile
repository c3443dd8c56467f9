FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    DATA_DIR=/data \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir uv \
    && useradd --system --uid 10001 --home /app gateway \
    && mkdir -p /data && chown gateway /data

WORKDIR /app
COPY pyproject.toml uv.lock .python-version ./
# Parts of masking and of the JSON encoding are C extensions (native/): built here, then
# the compiler is removed again.
COPY native ./native
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && uv sync --frozen --no-dev --no-install-project \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .

USER gateway
EXPOSE 8000
# One ASGI process per container; scale with more containers behind a load balancer.
# X-Forwarded-For is believed from the addresses in FORWARDED_ALLOW_IPS (default: none
# but 127.0.0.1).
CMD ["python", "-m", "mcpgw.serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
