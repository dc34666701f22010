# One image for the API (default), the accrual worker and the accrual simulator:
#   docker run IMAGE                      -> gophermart-api
#   docker run IMAGE gophermart-worker
#   docker run IMAGE accrual-sim --seed-demo
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv holding the app and its dependencies --------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject alone, so editing code reuses this layer.
# Every dependency ships manylinux wheels, so no compiler is needed here either.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY db ./db
COPY accrual_sim ./accrual_sim
COPY stack ./stack
# A regular (not editable) install: the venv is self-contained, migrations included.
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib

# --- runtime: the venv only, run as an unprivileged user ---------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 gophermart \
    && useradd --system --uid 10001 --gid gophermart --no-create-home \
               --home-dir /nonexistent --shell /usr/sbin/nologin gophermart
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Exec form: the process is PID 1 and receives SIGTERM for its graceful stop.
CMD ["gophermart-api"]
