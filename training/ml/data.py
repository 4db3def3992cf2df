"""From stored judgements to reward-model training examples.

A judgement carries a ranking: groups of reply ids, best first, replies in one group tied
(what labeling stores and the `raw` export writes). One judgement becomes one training
example that keeps all of its pairs together, so a K-way ranking is one batch element with
K(K-1)/2 pairs whose losses are averaged (InstructGPT), not K(K-1)/2 separate elements
that would over-weight rankings. Several annotators on one task give several examples.

- both-bad judgements carry no preference: excluded;
- ties (a group of several replies) give tie pairs, used only when tie_weight > 0;
- with use_margin, a pair's margin is strength * margin_scale (strength 1..4).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Judgement:
    prompt_id: str
    messages: list[dict]
    replies: dict[str, str]  # reply id -> text
    ranking: list[list[str]]  # groups of reply ids, best first
    choice: str = ""
    strength: int | None = None


@dataclass
class PreferenceExample:
    prompt_id: str
    messages: list[dict]
    replies: list[str]
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (better, worse, margin) indices into replies
    ties: list[tuple[int, int]] = field(default_factory=list)


def build_examples(
    judgements: Iterable[Judgement], *, use_margin: bool = False, margin_scale: float = 0.25, include_ties: bool = False
) -> list[PreferenceExample]:
    examples = []
    for judgement in judgements:
        if judgement.choice == "both_bad":
            continue
        order = [reply_id for group in judgement.ranking for reply_id in group]
        index = {reply_id: i for i, reply_id in enumerate(order)}
        margin = judgement.strength * margin_scale if use_margin and judgement.strength else 0.0
        pairs = [
            (index[better], index[worse], margin)
            for g, better_group in enumerate(judgement.ranking)
            for worse_group in judgement.ranking[g + 1 :]
            for better in better_group
            for worse in worse_group
        ]
        ties = []
        if include_ties:
            ties = [
                (index[a], index[b]) for group in judgement.ranking for i, a in enumerate(group) for b in group[i + 1 :]
            ]
        if not pairs and not ties:
            continue
        examples.append(
            PreferenceExample(
                prompt_id=str(judgement.prompt_id),
                messages=judgement.messages,
                replies=[judgement.replies[reply_id] for reply_id in order],
                pairs=pairs,
                ties=ties,
            )
        )
    return examples


def split_by_prompt(
    examples: list[PreferenceExample], val_fraction: float, seed: int = 0
) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """Train / validation split with no prompt on both sides."""
    prompt_ids = sorted({example.prompt_id for example in examples})
    random.Random(seed).shuffle(prompt_ids)
    n_val = max(1, round(len(prompt_ids) * val_fraction)) if val_fraction > 0 and len(prompt_ids) > 1 else 0
    val_prompts = set(prompt_ids[:n_val])
    train = [e for e in examples if e.prompt_id not in val_prompts]
    val = [e for e in examples if e.prompt_id in val_prompts]
    return train, val


def judgements_from_raw_export(lines: Iterable[str]) -> list[Judgement]:
    """Read the labeling app's `raw` export (one JSON object per line)."""
    judgements = []
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        judgements.append(
            Judgement(
                prompt_id=str(row.get("prompt_id", json.dumps(row["prompt"], sort_keys=True))),
                messages=row["prompt"],
                replies={str(r["id"]): r["text"] for r in row["responses"]},
                ranking=[[str(i) for i in group] for group in row["ranking"]],
                choice=row.get("choice", ""),
                strength=row.get("strength"),
            )
        )
    return judgements


def step_batches(n_examples: int, config, epoch: int, lengths: list[int]) -> list[list[int]]:
    """Example indices per optimisation step for one epoch, the same on every rank: shuffled
    by (seed, epoch), sorted by length within windows of 50 steps when config.group_by_length
    (less padding), cut into steps of batch_size x grad_accum, the steps shuffled. `config`:
    any trainer config with seed, batch_size, grad_accum and group_by_length (reward, DPO)."""
    order = list(range(n_examples))
    random.Random(config.seed * 1000 + epoch).shuffle(order)
    per_step = config.batch_size * config.grad_accum
    if config.group_by_length:
        window = per_step * 50
        order = [i for s in range(0, n_examples, window) for i in sorted(order[s : s + window], key=lambda i: lengths[i])]
    steps = [order[s : s + per_step] for s in range(0, n_examples, per_step)]
    random.Random(config.seed * 1000 + epoch + 1).shuffle(steps)
    return steps
