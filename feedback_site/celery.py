"""The Celery app. Broker: Redis (REDIS_URL / CELERY_BROKER_URL) in production and in the
tests; with neither set, kombu's filesystem transport under var/broker, so `make run`
works on a machine without Redis. Training tasks go to the `training` queue, one at a
time per worker process (prefetch 1, acks late, rejected if the worker dies)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_site.settings")

app = Celery("feedback_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
