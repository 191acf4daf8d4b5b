# The example app's image: celery-checkpoint with the Redis and Flower extras,
# plus example_app/. Used by docker-compose.yml for the worker, Flower and the
# demo-submit command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app
COPY pyproject.toml README.md ./
COPY celery_checkpoint ./celery_checkpoint
RUN pip install ".[redis,flower]"
COPY example_app ./example_app

# No reason to run the worker as root.
RUN useradd --create-home --uid 1000 app
USER app
ENV DEMO_DATA_DIR=/home/app/demo-data

CMD ["celery", "-A", "example_app.tasks", "worker", "--loglevel", "INFO"]
