"""Type checks of a run's config against the trainers' settings, without importing them.

The web process refuses a bad config when the run is asked for (HTTP 400 naming the key),
not later in the worker. The settings are the fields of the trainers' config dataclasses
(RewardTrainingConfig, PPOConfig, DPOConfig, OnlineRLConfig for RLOO and GRPO, SFTConfig,
SamplingConfig, AdapterConfig); they are read
from the source of training/ml with `ast`, so this module follows every change to them
and the web process never imports torch.
"""

from __future__ import annotations

import ast
import math
from functools import lru_cache
from pathlib import Path

ML = Path(__file__).resolve().parent / "ml"
STAGE_CLASSES = {
    "reward": ("reward.py", "RewardTrainingConfig"),
    "ppo": ("ppo.py", "PPOConfig"),
    "dpo": ("dpo.py", "DPOConfig"),
    "rloo": ("rloo.py", "OnlineRLConfig"),
    "grpo": ("rloo.py", "OnlineRLConfig"),
    "sft": ("sft.py", "SFTConfig"),
    "sampling": ("generation.py", "SamplingConfig"),
    "adapters": ("adapters.py", "AdapterConfig"),
}
# the plain keys of a run config: (type annotation, lowest, highest)
PLAIN_KEYS = {
    "prompts": ("int", 1, 100_000),
    "replies_per_prompt": ("int", 1, 64),
    "val_fraction": ("float", 0.0, 0.9),
    "use_margin": ("bool", None, None),
    "seed": ("int", 0, 2**32 - 1),
    "trigger": ("str", None, None),
    "new_judgements": ("int", 0, 10**12),
    "processes": ("int", 1, 64),
    # run kind "endpoints" (training/endpoint_runs.py checks them against the database)
    "endpoints": ("list[int]", None, None),
    "prompt_ids": ("list[int]", None, None),
    "pairing": ("str", None, None),
    "max_tokens": ("int", 1, 32768),
    "priority": ("int", -1000, 1000),
}
INT_RANGE = (0, 10**9)
FLOAT_LIMIT = 1e9
MAX_STRING = 1000


@lru_cache(maxsize=None)
def stage_fields(stage: str) -> dict[str, str]:
    """{field: type annotation} of a stage's config dataclass, read from its source."""
    filename, class_name = STAGE_CLASSES[stage]
    tree = ast.parse((ML / filename).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)}
    raise LookupError(f"{class_name} not found in training/ml/{filename}")


def _matches(option: str, value) -> bool:
    if option == "None":
        return value is None
    if option == "bool":
        return isinstance(value, bool)
    if option == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if option == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option == "str":
        return isinstance(value, str)
    if option == "list[str]":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if option == "list[int]":
        return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    if option == "dict":
        return isinstance(value, dict)
    return True  # an annotation this checker does not know: the trainer checks it


def _describe(annotation: str) -> str:
    words = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
             "None": "null", "list[str]": "a list of strings", "list[int]": "a list of whole numbers", "dict": "an object"}
    return " or ".join(words.get(option.strip(), option.strip()) for option in annotation.split("|"))


def value_problem(annotation: str, value, low=None, high=None) -> str | None:
    """Why `value` does not fit `annotation` (and the range), or None when it does."""
    options = [option.strip() for option in annotation.split("|")]
    if not any(_matches(option, value) for option in options):
        return f"must be {_describe(annotation)}, not {type(value).__name__ if value is not None else 'null'}"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        low = INT_RANGE[0] if low is None else low
        high = INT_RANGE[1] if high is None else high
        if not low <= value <= high:
            return f"must be between {low} and {high}"
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > FLOAT_LIMIT:
            return "must be a finite number"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be between {low} and {high}"
    elif isinstance(value, str) and len(value) > MAX_STRING:
        return f"must be at most {MAX_STRING} characters"
    return None


def config_problems(config: dict) -> list[tuple[str, str]]:
    """(key path, reason) for every setting that the trainers would refuse or misread."""
    problems = []
    for key, value in config.items():
        if key in STAGE_CLASSES:
            if not isinstance(value, dict):
                problems.append((key, f"must be an object of {key} settings"))
                continue
            fields = stage_fields(key)
            for name, item in value.items():
                if key in ("rloo", "grpo") and name == "algorithm":
                    problems.append((f"{key}.algorithm", f"set by the run kind: a {key} run runs {key.upper()}"))
                    continue
                if name not in fields:
                    problems.append((f"{key}.{name}", f"unknown setting; {key} takes {', '.join(sorted(fields))}"))
                    continue
                problem = value_problem(fields[name], item)
                if problem:
                    problems.append((f"{key}.{name}", problem))
        elif key == "filter":  # which judgements count: labeling.quality_filter (plain Python, no models)
            from labeling.quality_filter import filter_problems

            problems.extend((f"filter.{option}" if option else "filter", reason) for option, reason in filter_problems(value))
        elif key in PLAIN_KEYS:
            annotation, low, high = PLAIN_KEYS[key]
            problem = value_problem(annotation, value, low, high)
            if problem:
                problems.append((key, problem))
        else:
            allowed = ", ".join(list(STAGE_CLASSES) + list(PLAIN_KEYS) + ["filter"])
            problems.append((key, f"unknown key; allowed: {allowed}"))
    return problems
