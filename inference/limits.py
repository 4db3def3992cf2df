"""Each endpoint's concurrency limit inside one process: a semaphore per endpoint.

A batch run sizes its thread pool to the limit itself (inference.batch); the live pages
share these semaphores across the requests of one web process (deploy/ runs the stream
server as one process with many threads, so there the limit holds for the whole site).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from .client import RATE_LIMITED, EndpointError

_lock = threading.Lock()
_slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _semaphore(key: str, limit: int) -> threading.BoundedSemaphore:
    with _lock:
        semaphore = _slots.get((key, limit))
        if semaphore is None:
            semaphore = _slots[(key, limit)] = threading.BoundedSemaphore(limit)
        return semaphore


@contextmanager
def slot(key: str, limit: int, name: str, wait_seconds: float = 10.0):
    """Hold one of `limit` slots of endpoint `key`, waiting up to `wait_seconds`; a busy
    endpoint is an EndpointError("rate_limited") the caller can show and retry."""
    semaphore = _semaphore(key, limit)
    if not semaphore.acquire(timeout=wait_seconds):
        raise EndpointError(RATE_LIMITED, f"{name} is busy: all {limit} of its request slots are in use; try again shortly")
    try:
        yield
    finally:
        semaphore.release()
