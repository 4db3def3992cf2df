"""Synthetic preference data with a known rule, for tests and benchmarks.

Rule: of two replies, the one with more "good" words (helpful, correct, clear, ...) is
preferred. Prompts and replies are otherwise random filler words, so a reward model can
only reach high validation accuracy by learning the rule.
"""

from __future__ import annotations

import random

from .data import Judgement

GOOD_WORDS = ["helpful", "correct", "clear", "precise", "kind", "honest", "concise", "accurate"]
FILLER = (
    "the a of to and in is it that for on with as this was at by an be from or are which you one "
    "have not but they all there can more when some what would so about if out up into time only "
    "river stone cloud garden window market letter engine planet forest bridge candle mirror silver "
    "yellow quiet rapid gentle ancient modern simple heavy bright narrow"
).split()


def sentence(rng: random.Random, n_words: int, good: int = 0) -> str:
    words = [rng.choice(FILLER) for _ in range(n_words)]
    for _ in range(good):
        words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD_WORDS))
    return " ".join(words)


def preference_judgements(
    n: int, *, seed: int = 0, prompt_words: tuple[int, int] = (8, 20), reply_words: tuple[int, int] = (6, 16), k: int = 2
) -> list[Judgement]:
    """n judgements over n prompts; the replies' good-word counts differ by at least 2."""
    rng = random.Random(seed)
    judgements = []
    for i in range(n):
        counts = rng.sample(range(0, 2 * k + 2, 2), k)  # distinct, spaced by 2
        replies = {f"{i}-{j}": sentence(rng, rng.randint(*reply_words), good=c) for j, c in enumerate(counts)}
        ranked = [reply_id for _, reply_id in sorted(zip(counts, replies), reverse=True)]
        judgements.append(
            Judgement(
                prompt_id=f"p{i}",
                messages=[{"role": "user", "content": sentence(rng, rng.randint(*prompt_words))}],
                replies=replies,
                ranking=[[reply_id] for reply_id in ranked],
                choice="ranking" if k > 2 else "A",
                strength=2,
            )
        )
    return judgements


def corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, 20, good=rng.randint(0, 3)) for _ in range(n)]
