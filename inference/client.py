"""A client of the OpenAI chat-completions protocol: what vLLM, TGI, Ollama, llama.cpp,
`transformers serve` and the hosted APIs speak. No Django: the live pages, the batch
generation runs, the benchmarks and the tests all call these functions.

- `chat(spec, messages)`: one reply, non-streamed.
- `stream_chat(spec, messages)`: the reply's text pieces as they arrive (server-sent events).
- `with_retries(call)`: retry what may pass on its own (unreachable, timeout, 429, 5xx) with
  exponential backoff and jitter; a 429's Retry-After is honoured (capped).

Every failure is an `EndpointError` with a `kind` a caller can act on and a message a person
can read. The API key never appears in one: it is sent only in the Authorization header, an
error body that echoes it is redacted, and `EndpointSpec`'s repr leaves it out.

Timeouts: `spec.timeout` is the longest wait for the connection and for each next piece of
the answer; a stream that stalls longer fails with kind "timeout". Sizes: a reply longer than
`max_reply_chars`, or a response body larger than MAX_BODY_BYTES, fails with "too_large".
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

MAX_REPLY_CHARS = 100_000
MAX_BODY_BYTES = 4 * 1024 * 1024
ERROR_EXCERPT_CHARS = 300
RETRY_AFTER_CAP_SECONDS = 60.0

# kinds of failure; the first four may pass on their own and are retried
UNREACHABLE, TIMEOUT, RATE_LIMITED, SERVER_ERROR = "unreachable", "timeout", "rate_limited", "server_error"
AUTH, REFUSED, BAD_RESPONSE, TOO_LARGE, CANCELLED = "auth", "refused", "bad_response", "too_large", "cancelled"
RETRYABLE = frozenset({UNREACHABLE, TIMEOUT, RATE_LIMITED, SERVER_ERROR})


@dataclass(frozen=True)
class EndpointSpec:
    """Everything needed to call one endpoint. `base_url` as the OpenAI client takes it
    (".../v1"); sampling values left None are not sent (the server's defaults apply)."""

    name: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    system_prompt: str = ""
    timeout: float = 60.0
    concurrency: int = 4

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream, application/json"}
        if self.api_key:
            if not all("!" <= c <= "~" for c in self.api_key):  # checked when saved; a header cannot carry it
                raise EndpointError(AUTH, f"{self.name}'s API key holds characters an HTTP header cannot carry: save it again")
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def reply_limit(self, max_tokens: int | None = None) -> int | None:
        """The max_tokens a request asks for: the smaller of the endpoint's and the caller's."""
        limits = [limit for limit in (self.max_tokens, max_tokens) if limit]
        return min(limits) if limits else None

    def body(self, messages: list[dict], *, stream: bool, max_tokens: int | None = None, seed: int | None = None) -> dict:
        """The request body: the system prompt first (unless the conversation has its own),
        then the conversation; the endpoint's sampling defaults, max_tokens capped by the caller's."""
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.system_prompt and not (conversation and conversation[0]["role"] == "system"):
            conversation.insert(0, {"role": "system", "content": self.system_prompt})
        body: dict = {"model": self.model, "messages": conversation, "stream": stream}
        for key, value in (("temperature", self.temperature), ("top_p", self.top_p), ("max_tokens", self.reply_limit(max_tokens)), ("seed", seed)):
            if value is not None:
                body[key] = value
        if self.stop:
            body["stop"] = list(self.stop)
        return body


class EndpointError(Exception):
    """A failed call: `kind` (see the constants above), `status` (HTTP, when there was one),
    `retry_after` (seconds a 429 or 503 asked for)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.status, self.retry_after = kind, message, status, retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None
    seconds: float
    usage: dict | None = None


_http_lock = threading.Lock()
_http: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per process (thread-safe; connections are reused across calls)."""
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64), follow_redirects=False)
        return _http


def _timeout(spec: EndpointSpec) -> httpx.Timeout:
    return httpx.Timeout(spec.timeout, connect=min(spec.timeout, 10.0))


def redact(text: str, spec: EndpointSpec) -> str:
    """Text from the server, safe to show: the key removed (a server may echo it), cut short."""
    if spec.api_key and len(spec.api_key) >= 4:
        text = text.replace(spec.api_key, "[key]")
    text = " ".join(text.split())
    return text if len(text) <= ERROR_EXCERPT_CHARS else text[:ERROR_EXCERPT_CHARS] + "…"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds or seconds < 0:
        return 0.0
    return min(seconds, RETRY_AFTER_CAP_SECONDS)


def _error_detail(spec: EndpointSpec, raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            text = message
        elif isinstance(parsed.get("detail"), str):
            text = parsed["detail"]
    return redact(text, spec)


def _http_error(spec: EndpointSpec, response: httpx.Response, raw: bytes) -> EndpointError:
    status = response.status_code
    detail = _error_detail(spec, raw)
    said = f": {detail}" if detail else ""
    if status == 429:
        wait = _retry_after(response)
        after = f" (Retry-After {wait:g} s)" if wait is not None else ""
        return EndpointError(RATE_LIMITED, f"{spec.name} is rate limiting us (HTTP 429){after}{said}", status=status, retry_after=wait)
    if status in (401, 403):
        return EndpointError(AUTH, f"{spec.name} refused the API key (HTTP {status}){said}", status=status)
    if status >= 500:
        return EndpointError(SERVER_ERROR, f"{spec.name} failed (HTTP {status}){said}", status=status, retry_after=_retry_after(response) if status == 503 else None)
    return EndpointError(REFUSED, f"{spec.name} refused the request (HTTP {status}){said}", status=status)


def _transport_error(spec: EndpointSpec, exc: Exception) -> EndpointError:
    if isinstance(exc, httpx.TimeoutException):
        phase = "to connect" if isinstance(exc, httpx.ConnectTimeout) else "to answer"
        return EndpointError(TIMEOUT, f"{spec.name} took longer than {spec.timeout:g} s {phase}")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        reason = redact(str(exc), spec) or type(exc).__name__
        return EndpointError(UNREACHABLE, f"{spec.name} is unreachable at {spec.base_url}: {reason}")
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return EndpointError(REFUSED, f"{spec.name} has an unusable base URL {spec.base_url!r}: {redact(str(exc), spec)}")
    return EndpointError(UNREACHABLE, f"{spec.name}: {type(exc).__name__}: {redact(str(exc), spec)}")


def _unexpected(spec: EndpointSpec, exc: Exception) -> EndpointError:
    """Anything else that breaks inside the HTTP library, as an EndpointError raised `from
    None`: the library's frames (whose locals hold the request headers, the key among them)
    never reach a traceback, a log or Django's debug page."""
    return EndpointError(BAD_RESPONSE, f"{spec.name}: the request failed ({type(exc).__name__})")


def _read_capped(response: httpx.Response, spec: EndpointSpec, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise EndpointError(TOO_LARGE, f"{spec.name} sent more than {limit // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _message_text(spec: EndpointSpec, payload) -> tuple[str, str | None, dict | None]:
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(BAD_RESPONSE, f"{spec.name} answered without a reply (no choices[0].message.content)") from None
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise EndpointError(BAD_RESPONSE, f"{spec.name} answered with a reply that is not text")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
    return text, choice.get("finish_reason"), usage


def chat(
    spec: EndpointSpec, messages: list[dict], *, max_tokens: int | None = None, seed: int | None = None,
    max_reply_chars: int = MAX_REPLY_CHARS,
) -> Reply:
    """One reply, not streamed. Raises EndpointError."""
    started = time.monotonic()
    body = spec.body(messages, stream=False, max_tokens=max_tokens, seed=seed)
    try:
        with http_client().stream("POST", spec.url, json=body, headers=spec.headers(), timeout=_timeout(spec)) as response:
            raw = _read_capped(response, spec, MAX_BODY_BYTES)
            if response.status_code != 200:
                raise _http_error(spec, response, raw)
    except httpx.HTTPError as exc:
        raise _transport_error(spec, exc) from None
    except (EndpointError, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - see _unexpected
        raise _unexpected(spec, exc) from None
    try:
        payload = json.loads(raw)
    except ValueError:
        raise EndpointError(BAD_RESPONSE, f"{spec.name} answered with something that is not JSON: {redact(raw[:200].decode('utf-8', 'replace'), spec)}") from None
    text, finish, usage = _message_text(spec, payload)
    if len(text) > max_reply_chars:
        raise EndpointError(TOO_LARGE, f"{spec.name}'s reply is longer than {max_reply_chars} characters")
    return Reply(text=text, finish_reason=finish, seconds=time.monotonic() - started, usage=usage)


def _stream_events(spec: EndpointSpec, response: httpx.Response) -> Iterator[dict | None]:
    """The JSON payloads of a server-sent event stream; None for the final `[DONE]`."""
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
            continue
        if line.strip() or not data:  # comments, `event:` / `id:` lines, blank keep-alives
            continue
        yield _parse_event(spec, "\n".join(data))
        data = []
    if data:
        yield _parse_event(spec, "\n".join(data))


def _parse_event(spec: EndpointSpec, data: str) -> dict | None:
    if data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        raise EndpointError(BAD_RESPONSE, f"{spec.name} sent a malformed stream event: {redact(data[:120], spec)}") from None
    if not isinstance(payload, dict):
        raise EndpointError(BAD_RESPONSE, f"{spec.name} sent a stream event that is not an object")
    if "error" in payload and not payload.get("choices"):
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise EndpointError(SERVER_ERROR, f"{spec.name} failed mid-reply: {redact(str(message), spec)}")
    return payload


def stream_chat(
    spec: EndpointSpec, messages: list[dict], *, max_tokens: int | None = None, seed: int | None = None,
    should_stop: Callable[[], bool] | None = None, max_reply_chars: int = MAX_REPLY_CHARS,
) -> Iterator[str]:
    """The reply's text, piece by piece, as the endpoint streams it. Raises EndpointError,
    also after some pieces (a cut or malformed stream, a stall, a reply over the size limit):
    a caller keeps nothing of a reply that did not end well. `should_stop` is asked between
    pieces; when it says yes the stream is closed and EndpointError("cancelled") raised."""
    body = spec.body(messages, stream=True, max_tokens=max_tokens, seed=seed)
    length, finished, done = 0, False, False
    try:
        with http_client().stream("POST", spec.url, json=body, headers=spec.headers(), timeout=_timeout(spec)) as response:
            if response.status_code != 200:
                raise _http_error(spec, response, _read_capped(response, spec, 64 * 1024))
            kind = response.headers.get("content-type", "")
            if "json" in kind and "event-stream" not in kind:  # a server that ignores "stream": the whole reply at once
                payload = json.loads(_read_capped(response, spec, MAX_BODY_BYTES))
                text = _message_text(spec, payload)[0]
                if len(text) > max_reply_chars:
                    raise EndpointError(TOO_LARGE, f"{spec.name}'s reply is longer than {max_reply_chars} characters")
                yield text
                return
            for payload in _stream_events(spec, response):
                if should_stop is not None and should_stop():
                    raise EndpointError(CANCELLED, "stopped")
                if payload is None:
                    done = True
                    break
                for choice in payload.get("choices") or []:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if piece:
                        if not isinstance(piece, str):
                            raise EndpointError(BAD_RESPONSE, f"{spec.name} streamed a piece that is not text")
                        length += len(piece)
                        if length > max_reply_chars:
                            raise EndpointError(TOO_LARGE, f"{spec.name}'s reply is longer than {max_reply_chars} characters")
                        yield piece
                    if choice.get("finish_reason"):
                        finished = True
    except httpx.HTTPError as exc:
        raise _transport_error(spec, exc) from None
    except (EndpointError, GeneratorExit):
        raise
    except ValueError:
        raise EndpointError(BAD_RESPONSE, f"{spec.name} answered with something that is not JSON") from None
    except Exception as exc:  # noqa: BLE001 - see _unexpected
        raise _unexpected(spec, exc) from None
    if not (done or finished):
        raise EndpointError(BAD_RESPONSE, f"{spec.name}'s stream ended before the reply was complete (no finish_reason, no [DONE])")


def with_retries(
    call: Callable[[], object], *, attempts: int = 4, base_delay: float = 0.5, max_delay: float = 20.0,
    sleep: Callable[[float], None] = time.sleep, should_stop: Callable[[], bool] | None = None,
    on_retry: Callable[[EndpointError, float], None] | None = None,
):
    """`call()`, tried again after a retryable EndpointError: exponential backoff with full
    jitter (base_delay * 2^n, at most max_delay), or the server's Retry-After when it sent one."""
    for attempt in range(attempts):
        try:
            return call()
        except EndpointError as error:
            if not error.retryable or attempt == attempts - 1:
                raise
            wait = error.retry_after if error.retry_after is not None else random.uniform(0, min(max_delay, base_delay * 2**attempt))
            if on_retry is not None:
                on_retry(error, wait)
            if should_stop is not None and should_stop():
                raise EndpointError(CANCELLED, "stopped") from error
            sleep(wait)
    raise AssertionError("unreachable")
