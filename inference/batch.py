"""Replies of several endpoints to many prompts, concurrently (no Django).

Each endpoint gets a pool of `spec.concurrency` threads, so it never sees more requests at
once than its limit, and each request is retried by client.with_retries (backoff, a 429's
Retry-After). `generate_replies` yields one PromptOutcome per prompt as soon as every
endpoint has answered it (or failed for good), so the caller writes whole comparison tasks
as it goes and never a half-made one. While nothing completes it yields None every
TICK_SECONDS, so that the caller can check for a cancel; closing the generator stops the
work: queued requests are dropped and running ones end at their next retry.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import client

TICK_SECONDS = 0.5


@dataclass
class PromptOutcome:
    index: int
    replies: dict = field(default_factory=dict)  # endpoint key -> client.Reply
    errors: dict = field(default_factory=dict)  # endpoint key -> client.EndpointError

    @property
    def ok(self) -> bool:
        return not self.errors


def generate_replies(
    endpoints: dict, prompts: list[list[dict]], *, max_tokens: int | None = None, attempts: int = 4,
    max_reply_chars: int = client.MAX_REPLY_CHARS, on_retry: Callable[[object, client.EndpointError, float], None] | None = None,
) -> Iterator[PromptOutcome | None]:
    """`endpoints`: {key: EndpointSpec}. Yields a PromptOutcome per prompt (in the order they
    complete), and None while waiting."""
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def one(index: int, key) -> None:
        if stop.is_set():
            return
        spec = endpoints[key]
        try:
            reply = client.with_retries(
                lambda: client.chat(spec, prompts[index], max_tokens=max_tokens, max_reply_chars=max_reply_chars),
                attempts=attempts, should_stop=stop.is_set, sleep=stop.wait,
                on_retry=(lambda error, wait: on_retry(key, error, wait)) if on_retry else None,
            )
            done.put((index, key, reply, None))
        except client.EndpointError as error:
            done.put((index, key, None, error))
        except Exception as error:  # noqa: BLE001 - one prompt's failure, reported, never the whole batch
            done.put((index, key, None, client.EndpointError(client.BAD_RESPONSE, f"{spec.name}: {type(error).__name__}: {error}")))

    pools = {key: ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix=f"endpoint-{key}") for key, spec in endpoints.items()}
    try:
        for index in range(len(prompts)):
            for key, pool in pools.items():
                pool.submit(one, index, key)
        pending: dict[int, PromptOutcome] = {}
        remaining = len(prompts)
        while remaining:
            try:
                index, key, reply, error = done.get(timeout=TICK_SECONDS)
            except queue.Empty:
                yield None
                continue
            outcome = pending.setdefault(index, PromptOutcome(index))
            if error is None:
                outcome.replies[key] = reply
            else:
                outcome.errors[key] = error
            if len(outcome.replies) + len(outcome.errors) == len(endpoints):
                del pending[index]
                remaining -= 1
                yield outcome
    finally:
        stop.set()
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
