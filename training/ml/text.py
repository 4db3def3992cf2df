"""Turning conversations into model text, and tokenizing prompts and replies.

A tokenizer with a chat template (a real chat model) gets its own template; otherwise the
HH-RLHF transcript form is used: "\\n\\nHuman: ...\\n\\nAssistant:" and the reply after a
space. Prompt and reply are tokenized separately and concatenated, so that one prompt's
tokens are identical for all of its replies (which is what lets the reward model compute
the shared prompt once).
"""

from __future__ import annotations

from dataclasses import dataclass


def render_prompt(messages: list[dict], tokenizer=None) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"\n\n{'Assistant' if m['role'] == 'assistant' else 'Human'}: {m['content']}" for m in messages]
    return "".join(parts) + "\n\nAssistant:"


def render_reply(reply: str, tokenizer=None) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
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
