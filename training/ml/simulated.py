"""Simulated annotators: how the demo gets a judgement history without people (#20).

A newcomer's first cycle has no judgements of the policy's own replies, and a reward model
trained only on hand-written replies cannot tell the policy's replies apart (they are
another kind of text), so PPO against it learns nothing. The demo can therefore load a
history that simulated annotators made, clearly marked as such: the policy writes several
replies to each demo prompt, and each simulated annotator ranks them the way a person with
the demo's reference answer in hand might.

The rule. A reply's quality is its word overlap with the reference answer (the demo author's
best reply): the F1 of the two bags of lower-case words (`reference_overlap`). An annotator
is not a perfect judge: the ranking is a Plackett-Luce draw (`noisy_ranking`), best first,
each place taken with probability proportional to exp(quality / temperature). With the
default temperature 0.02 and a typical spread of 0.03 between the overlaps of a small
policy's replies, two replies are ranked right about 80% of the time, as people agree with
each other on clear-cut pairs.

Pure functions: no Django, no torch.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

WORD = re.compile(r"[a-z0-9]+")
DEFAULT_TEMPERATURE = 0.02


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def reference_overlap(reply: str, reference: str) -> float:
    """Word-overlap F1 of `reply` against `reference`, in [0, 1]; 0 when either has no words."""
    ours, theirs = Counter(words(reply)), Counter(words(reference))
    common = sum((ours & theirs).values())
    if not common:
        return 0.0
    precision, recall = common / sum(ours.values()), common / sum(theirs.values())
    return 2 * precision * recall / (precision + recall)


def noisy_ranking(qualities: list[float], rng: random.Random, temperature: float = DEFAULT_TEMPERATURE) -> list[int]:
    """Indices of `qualities`, best first, as a Plackett-Luce draw: each next place goes to
    one of the replies left with probability proportional to exp(quality / temperature).
    Temperature 0: sorted by quality (ties keep their order)."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    left = list(range(len(qualities)))
    if temperature == 0:
        return sorted(left, key=lambda i: -qualities[i])
    order = []
    while left:
        top = max(qualities[i] for i in left)
        weights = [math.exp((qualities[i] - top) / temperature) for i in left]
        pick = rng.random() * sum(weights)
        for position, weight in enumerate(weights):
            pick -= weight
            if pick <= 0 or position == len(weights) - 1:
                order.append(left.pop(position))
                break
    return order
