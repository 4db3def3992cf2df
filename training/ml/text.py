"""Turning conversations into model text, and tokenizing prompts and replies.

A tokenizer with a chat template (a real chat model) gets its own template; otherwise the
HH-RLHF transcript form is used: "\\n\\nHuman: ...\\n\\nAssistant:" and the reply after a
space. Prompt and reply are tokenized separately and concatenated, so that one prompt's
tokens are identical for all of its replies (which is what lets the reward model compute
the shared prompt once).

Every policy the app saves carries a chat template (`ensure_chat_template`): its own, or
TRANSCRIPT_CHAT_TEMPLATE, which renders a conversation exactly as `render_prompt` does, so
that an OpenAI-compatible server (`transformers serve`, vLLM) prompts the policy as the
trainers did. The reply the server samples after "Assistant:" starts with the space that
`render_reply` puts there; a client strips it.
"""

from __future__ import annotations

from dataclasses import dataclass


# The HH transcript as a Jinja chat template: render_prompt's transcript form, character for
# character (tests/ml/test_chat_template.py); system turns are the Human's, as there.
TRANSCRIPT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + message['content'] }}"
    "{% else %}{{ '\\n\\nHuman: ' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)


def has_own_chat_template(tokenizer) -> bool:
    """A real chat model's template (not absent, not the transcript one): the trainers use it."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return bool(template) and template != TRANSCRIPT_CHAT_TEMPLATE


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the transcript one (before saving a policy)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = TRANSCRIPT_CHAT_TEMPLATE


def render_prompt(messages: list[dict], tokenizer=None) -> str:
    if has_own_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"\n\n{'Assistant' if m['role'] == 'assistant' else 'Human'}: {m['content']}" for m in messages]
    return "".join(parts) + "\n\nAssistant:"


def render_reply(reply: str, tokenizer=None) -> str:
    if has_own_chat_template(tokenizer):
        return reply
    return " " + reply


def end_token_id(tokenizer) -> int:
    """The token that closes a reply: EOS for decoders, SEP for BERT-style encoders."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token is None:
        raise ValueError("the tokenizer has neither an EOS nor a SEP token")
    return token


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    reply_ids: list[int]


def tokenize_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[int]:
    """Prompt tokens, keeping the most recent `max_tokens` (the end of a conversation matters most)."""
    ids = tokenizer(render_prompt(messages, tokenizer), add_special_tokens=True)["input_ids"]
    special_tail = [] if not ids or ids[-1] not in tokenizer.all_special_ids else [ids[-1]]
    if special_tail:  # BERT-style [SEP] after the prompt: drop it, the reply follows
        ids = ids[:-1]
    return ids[-max_tokens:] if len(ids) > max_tokens else ids


def tokenize_reply(tokenizer, reply: str, max_tokens: int) -> list[int]:
    """Reply tokens ending with the end token (EOS / SEP), truncated to `max_tokens`."""
    ids = tokenizer(render_reply(reply, tokenizer), add_special_tokens=False)["input_ids"][: max_tokens - 1]
    return ids + [end_token_id(tokenizer)]


def position_limit(model) -> int | None:
    """The longest sequence the model's position embeddings cover (GPT-2's n_positions, BERT's
    and Llama's max_position_embeddings; None when the config names no limit). Any wrapper
    (LoRA, our RewardModel) is looked through to the transformers model's config."""
    for owner in (model, getattr(model, "backbone", None)):
        config = getattr(owner, "config", None)
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def fit_to_positions(prompt: list[int], reply: list[int], limit: int | None) -> tuple[list[int], list[int]]:
    """Prompt and reply cut so that together they fit `limit` positions: the reply keeps at
    least half the room when the prompt is long, and its last token (the end token that
    tokenize_reply puts there); the prompt keeps its most recent tokens (as tokenize_prompt
    cuts). A sequence longer than the model's positions is an index error in GPT-2's position
    embedding: 384 prompt + 256 reply tokens on the default policy's 512."""
    if limit is None or len(prompt) + len(reply) <= limit:
        return prompt, reply
    reply = cut_reply(reply, limit - min(len(prompt), limit // 2))
    room = limit - len(reply)
    return (prompt[-room:] if room > 0 else []), reply


def cut_reply(reply: list[int], length: int) -> list[int]:
    """The first length - 1 tokens and the last one (the end token)."""
    return reply if len(reply) <= length else reply[: max(length - 1, 0)] + reply[-1:]


def fit_example(prompt: list[int], replies: list[list[int]], limit: int | None) -> tuple[list[int], list[list[int]]]:
    """A prompt and the replies that each follow it, cut as fit_to_positions cuts the longest."""
    if limit is None or not replies:
        return prompt, replies
    longest = max(replies, key=len)
    prompt, kept = fit_to_positions(prompt, longest, limit)
    return prompt, [cut_reply(reply, len(kept)) for reply in replies]


def prompt_room(limit: int | None, max_prompt_tokens: int, new_tokens: int) -> int:
    """How many prompt tokens to keep so that `new_tokens` sampled ones still fit the positions."""
    return max_prompt_tokens if limit is None else max(1, min(max_prompt_tokens, limit - new_tokens))
