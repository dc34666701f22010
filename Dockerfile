# One image for the API (default), the accrual worker and the accrual simulator:
#   docker run IMAGE                      -> gophermart-api
#   docker run IMAGE gophermart-worker
#   docker run IMAGE accrual-sim --seed-demo
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv holding the app and its dependencies --------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Exact versions with their hashes (requirements/*.lock, `make lock`): a package
# missing from the lock, or a file whose hash differs, fails the build instead of
# resolving something else (a dependency missing from the lock has no hash, which
# --require-hashes refuses too). Wheels only, so no compiler is needed either.
# Dependencies first, from the lock alone, so editing code reuses this layer.
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --only-binary=:all: \
           -r requirements/runtime.lock \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary=:all: \
           -r requirements/build.lock

COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY db ./db
COPY accrual_sim ./accrual_sim
COPY stack ./stack
# The project's wheel is built with the locked setuptools in /opt/build, and a
# regular (not editable) install keeps /opt/venv self-contained, migrations
# included. pip and setuptools then leave /opt/venv: nothing at run time uses them.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
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
