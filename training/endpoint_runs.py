"""Run kind "endpoints": replies of two or more model endpoints to a set of prompts, made into
comparison tasks. No torch: the endpoints do the generating (inference.batch).

Config: {"endpoints": [id, ...] (2..8), "prompts": N (the project's prompts with the fewest
tasks first, default the project's generate_prompts) or "prompt_ids": [...] (an uploaded
prompts file, labeling.prompts), "pairing": "pairs" (a task per pair of endpoints, the
default) or "all" (one task comparing every endpoint's reply: a ranking when more than two),
"max_tokens": N (caps each endpoint's own), "priority": N}.

Every reply records its source: Response.endpoint and its name as the origin (what the
leaderboard ranks and the exports carry), and for the app's own policies the policy version.
A prompt is made into tasks only when every endpoint answered it: one that failed (after the
retries) is listed in the run's metrics with the reason, and no task is half made. Progress
counts prompts; cancel stops at the next prompt (the tasks already made are whole).
"""

from __future__ import annotations

import threading
import time
from itertools import combinations

from django.conf import settings
from django.db import transaction

from inference import batch
from inference.exceptions import KeyUnavailable
from inference.models import ModelEndpoint
from labeling.models import Prompt
from labeling.services import add_comparison_task, endpoint_reply

from . import selectors, services
from .exceptions import InvalidTrainingRequest, TrainingFailed
from .models import RunKind
from .ml.hooks import TrainingCancelled

PAIRINGS = ("pairs", "all")
MAX_ENDPOINTS = 8
MAX_PROMPT_IDS = 10_000
MAX_FAILURES_LISTED = 100
MAX_FAILURES_LOGGED = 20
TASK_PRIORITY = 10  # fresh model replies are served before older tasks, as generation's are


def check_request(project, config: dict) -> None:
    """InvalidTrainingRequest (HTTP 400) unless the config names 2+ usable endpoints and a prompt set."""
    check_endpoints(project, config)
    check_prompts(project, config)


def check_endpoints(project, config: dict) -> None:
    ids = config.get("endpoints")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidTrainingRequest("'endpoints' must list the ids of 2 to 8 model endpoints", field="config")
    if not 2 <= len(set(ids)) <= MAX_ENDPOINTS or len(set(ids)) != len(ids):
        raise InvalidTrainingRequest(f"'endpoints' must list 2 to {MAX_ENDPOINTS} different endpoints", field="config")
    found = {e.pk: e for e in ModelEndpoint.objects.filter(pk__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidTrainingRequest(f"'endpoints': no endpoint with id {', '.join(map(str, missing))}", field="config")
    off = [found[i].name for i in ids if not found[i].is_active]
    if off:
        raise InvalidTrainingRequest(f"'endpoints': {', '.join(off)} is switched off", field="config")
    pairing = config.get("pairing", "pairs")
    if pairing not in PAIRINGS:
        raise InvalidTrainingRequest(f"'pairing' must be one of {', '.join(PAIRINGS)}", field="config")
    if pairing == "all" and len(ids) > project.max_responses:
        raise InvalidTrainingRequest(
            f"'pairing' all: {len(ids)} replies per task, more than the project's K ({project.max_responses}); use pairs", field="config"
        )


def check_prompts(project, config: dict) -> None:
    prompt_ids = config.get("prompt_ids")
    if prompt_ids is not None:
        if "prompts" in config:
            raise InvalidTrainingRequest("give either 'prompts' (a number of the project's prompts) or 'prompt_ids', not both", field="config")
        if not isinstance(prompt_ids, list) or not prompt_ids or len(prompt_ids) > MAX_PROMPT_IDS or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in prompt_ids
        ):
            raise InvalidTrainingRequest(f"'prompt_ids' must list 1 to {MAX_PROMPT_IDS} prompt ids", field="config")
        known = Prompt.objects.filter(project=project, pk__in=prompt_ids).count()
        if known != len(set(prompt_ids)):
            raise InvalidTrainingRequest("'prompt_ids' names prompts that are not this project's", field="config")
    elif not Prompt.objects.filter(project=project).exists():
        raise InvalidTrainingRequest("the project has no prompts: import some, or upload a prompts file", field="config")


def start_endpoint_run(*, project, config: dict, prompts_file=None, source: str = "", requested_by=None):
    """Start an "endpoints" run; with `prompts_file` (a binary stream of a prompts-only JSON
    Lines file) its prompts join the project's and the run asks exactly those. All or
    nothing: a bad file (ImportFailed, line-numbered), a bad config or a run already active
    leaves neither prompts nor a run behind."""
    from labeling.importing.services import import_prompts

    config = dict(config or {})
    if prompts_file is not None:
        if "prompts" in config or "prompt_ids" in config:
            raise InvalidTrainingRequest("give a prompts file or a number of the project's prompts, not both", field="file")
        check_endpoints(project, config)  # before the file is read
    with transaction.atomic():
        if prompts_file is not None:
            config["prompt_ids"] = import_prompts(project=project, stream=prompts_file, source=source, max_prompts=MAX_PROMPT_IDS)
        return services.start_run(project=project, kind=RunKind.ENDPOINTS, config=config, requested_by=requested_by)


def _prompts(run) -> list[Prompt]:
    ids = run.config.get("prompt_ids")
    if ids is not None:
        by_id = Prompt.objects.filter(project=run.project).in_bulk(ids)
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
    rules = services.training_settings_for(run.project)
    return selectors.prompts_for_generation(run.project, int(run.config.get("prompts", rules.generate_prompts)), seed=run.pk)


def _excerpt(prompt: Prompt) -> str:
    text = " ".join(str(prompt.messages[-1].get("content", "")).split()) if prompt.messages else ""
    return text[:120] + ("…" if len(text) > 120 else "")


def stage_endpoints(run, reporter) -> dict:
    ids = list(run.config["endpoints"])
    endpoints = ModelEndpoint.objects.in_bulk(ids)
    if len(endpoints) != len(ids):
        raise TrainingFailed("an endpoint of this run was removed before it started")
    try:
        specs = {pk: endpoints[pk].spec() for pk in ids}
    except KeyUnavailable as error:
        raise TrainingFailed(error.message) from None
    prompts = _prompts(run)
    if not prompts:
        raise TrainingFailed("no prompts to ask")
    pairing, max_tokens = run.config.get("pairing", "pairs"), run.config.get("max_tokens")
    priority = int(run.config.get("priority", TASK_PRIORITY))
    names = [endpoints[pk].name for pk in ids]
    reporter.log(f"asking {', '.join(names)} for replies to {len(prompts)} prompts ({pairing})")
    retries: list[str] = []  # filled by the request threads, logged by this one (no database work in those threads)
    retries_lock = threading.Lock()

    def on_retry(key, error, wait):
        with retries_lock:
            retries.append(f"{endpoints[key].name}: {error.message}; retrying in {wait:.1f} s")

    logged = 0

    def log_retries() -> None:  # the first MAX_FAILURES_LOGGED retries go to the run's log
        nonlocal logged
        with retries_lock:
            fresh = retries[logged:MAX_FAILURES_LOGGED]
        logged += len(fresh)
        for line in fresh:
            reporter.log(line)

    started, done, created, identical = time.monotonic(), 0, 0, 0
    failures: list[dict] = []
    outcomes = batch.generate_replies(
        specs, [p.messages for p in prompts], max_tokens=max_tokens, max_reply_chars=settings.ENDPOINT_MAX_REPLY_CHARS, on_retry=on_retry
    )
    try:
        for outcome in outcomes:
            log_retries()
            if reporter.should_stop():
                raise TrainingCancelled("stopped on request")
            if outcome is None:
                continue
            done += 1
            prompt = prompts[outcome.index]
            if not outcome.ok:
                reasons = {endpoints[key].name: error.message for key, error in outcome.errors.items()}
                failures.append({"prompt_id": prompt.pk, "prompt": _excerpt(prompt), "reasons": reasons})
                if len(failures) <= MAX_FAILURES_LOGGED:
                    reporter.log(f"prompt {prompt.pk} left out: " + "; ".join(reasons.values()))
            else:
                replies = {
                    pk: endpoint_reply(
                        endpoints[pk], outcome.replies[pk].text, max_tokens=max_tokens or endpoints[pk].max_tokens,
                        finish_reason=outcome.replies[pk].finish_reason, seconds=round(outcome.replies[pk].seconds, 3),
                    )
                    for pk in ids
                }
                groups = [list(pair) for pair in combinations(ids, 2)] if pairing == "pairs" else [ids]
                for group in groups:
                    if add_comparison_task(prompt=prompt, replies=[replies[pk] for pk in group], priority=priority) is not None:
                        created += 1
                    elif len({replies[pk].text for pk in group}) < len(group):
                        identical += 1
            reporter.on_progress({"step": done, "fraction": done / len(prompts)})
    finally:
        outcomes.close()
    log_retries()
    seconds = time.monotonic() - started
    answered = done - len(failures)
    reporter.log(
        f"{created} comparison tasks from {answered} of {len(prompts)} prompts in {seconds:.1f} s; "
        f"{len(failures)} prompts failed" + (f", {identical} pairs of identical replies left out" if identical else "")
    )
    return {
        "endpoints": names, "prompts": len(prompts), "prompts_answered": answered, "prompts_failed": len(failures),
        "tasks_created": created, "identical_pairs": identical, "retries": len(retries),
        "replies_per_second": round(answered * len(ids) / seconds, 3) if seconds > 0 else None,
        "failures": failures[:MAX_FAILURES_LISTED],
    }
