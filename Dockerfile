# chatproj runtime image: the web server (uvicorn), Celery worker, beat and Flower all
# run from it; docker-compose.yml picks the process with `command`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# An unprivileged user with a fixed uid (numeric USER below, so orchestrators can
# verify runAsNonRoot).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app

# Runtime dependencies only (requirements-dev.txt holds tests and embedded servers).
# Copied first so code changes do not reinstall them.
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

WORKDIR /app
# The code stays owned by root: the app user can read it, not change it.
COPY . .

# Static files are collected into STATIC_ROOT (staticfiles/) at build time and served
# by WhiteNoise. Settings refuse DEBUG=False without a SECRET_KEY, so this step gets a
# throwaway one that exists only in this RUN (never in the image's environment).
RUN DEBUG=False SECRET_KEY=build-only-collectstatic-not-a-secret \
        python manage.py collectstatic --noinput \
    && python -m compileall -q chat chatproj \
    && mkdir -p /tmp/prometheus && chown app:app /tmp/prometheus

USER 10001:10001
EXPOSE 8000
CMD ["uvicorn", "chatproj.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", "--ws-max-size", "1048576", "--ws-ping-timeout", "60", "--no-proxy-headers"]
