# fedtune: one image for the coordinating server and for sites (CPU build of torch; see README for GPUs).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
WORKDIR /app

# torch first, pinned, from the CPU index: resolving the rest must never pull a CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY common ./common
COPY client ./client
COPY server ./server
COPY simulations ./simulations
# The mount points of the named volumes exist and belong to the unprivileged user, so fresh volumes inherit that.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 fedtune \
    && mkdir -p /ledger /srv/federation \
    && chown fedtune:fedtune /ledger /srv/federation
USER fedtune
ENTRYPOINT ["fedtune"]
CMD ["--help"]
