"""Parse import files into records, one per line, without touching the database.

Formats (`--format`):

jsonl  {"prompt": str | "messages": [{role, content}, ...], "responses": [str | {"text": str,
        "model": str}, ...], "metadata": {...}?, "gold": N?}. The conversation ends with a
        user turn; 2..K replies.
csv    header row, then one row per item. Columns: `prompt` (text) or `messages`
       (a JSON list of {role, content}); `response_1` .. `response_K` (empty cells
       ignored) and optionally `model_1` .. `model_K` (each reply's source); optional
       `metadata` (a JSON object) and `gold`. Line numbers count the header as 1.
hh     Anthropic HH-RLHF: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...};
       the shared transcript up to the last "\\n\\nAssistant:" becomes the conversation,
       the two final assistant replies the responses (chosen first).
trl    TRL preference data {"prompt", "chosen", "rejected"}: plain strings, or the
       conversational form (prompt a list of messages, chosen / rejected lists holding
       the assistant reply).
replies one reply per line: {"prompt" | "messages", "model": str, "response": str,
       "metadata"?}; the replies of different models to one prompt are paired into tasks
       (importing.services: all pairs, or a sample per prompt).

A reply's source (hh and trl: "chosen_model" / "rejected_model") is what the leaderboard
ranks and the raw export carries; without one, the file's name.

For hh and trl the first response is the chosen one, so `--with-labels` can store the
given preference.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .. import jsonsafety

FORMATS = ("jsonl", "csv", "hh", "trl", "replies")
ROLES = ("system", "user", "assistant")
MAX_REPLY_CHARS = 100_000
UTF8_BOM = b"\xef\xbb\xbf"  # spreadsheet programs start UTF-8 files with it


class RecordError(ValueError):
    """One line is invalid; the message says why."""


@dataclass
class ImportRecord:
    line: int
    messages: list[dict]
    responses: list[str]
    source_format: str  # text / chat / hh
    metadata: dict = field(default_factory=dict)
    labelled: bool = False  # responses[0] is the chosen one
    sources: list = field(default_factory=list)  # per reply, its source (a model's name), or None: the file's name
    gold: int | None = None  # a gold task: the index in `responses` of the reply a careful annotator must prefer

    @property
    def prompt_hash(self) -> str:
        return content_hash(self.messages)


def content_hash(value) -> str:
    canonical = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def response_set_hash(prompt_hash: str, reply_hashes: list[str], identity: str = "") -> str:
    """Identity of a comparison task: its prompt and the set of replies it compares (and an
    identity of its own, for a task that must stay distinct: a live turn's)."""
    return content_hash([prompt_hash, sorted(reply_hashes)] + ([identity] if identity else []))


# --------------------------------------------------------------------------- validation


def check_messages(messages, what: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"'{what}' must be a non-empty list of {{role, content}} objects")
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"'{what}[{i}]' must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RecordError(f"'{what}[{i}].role' must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RecordError(f"'{what}[{i}].content' must be a string")
        if not content.strip() and role != "system":
            raise RecordError(f"'{what}[{i}].content' is empty")
        cleaned.append({"role": role, "content": content})
    if cleaned[-1]["role"] != "user":
        raise RecordError(f"the last turn of '{what}' must be the user's (the replies answer it)")
    return cleaned


def _check_responses(responses, max_responses: int) -> list[str]:
    if not isinstance(responses, list):
        raise RecordError("'responses' must be a list of strings")
    if not 2 <= len(responses) <= max_responses:
        raise RecordError(f"'responses' must hold 2 to {max_responses} replies, got {len(responses)}")
    for i, text in enumerate(responses):
        if not isinstance(text, str):
            raise RecordError(f"'responses[{i}]' must be a string")
        if not text.strip():
            raise RecordError(f"'responses[{i}]' is empty")
        if len(text) > MAX_REPLY_CHARS:
            raise RecordError(f"'responses[{i}]' is longer than {MAX_REPLY_CHARS} characters")
    if len(set(responses)) != len(responses):
        raise RecordError("'responses' contains the same reply twice")
    return list(responses)


MAX_SOURCE_CHARS = 200  # Response.origin


def _check_source(value, where: str) -> str | None:
    """A reply's source: a model's name, one line of at most MAX_SOURCE_CHARS characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SOURCE_CHARS or any(ord(c) < 32 for c in value):
        raise RecordError(f"'{where}' must be a model's name: one line of 1 to {MAX_SOURCE_CHARS} characters")
    return value.strip()


def _split_responses(responses) -> tuple[list, list[str | None]]:
    """'responses' items as given (strings, or {"text", "model"} objects): (texts, sources)."""
    if not isinstance(responses, list):
        raise RecordError("'responses' must be a list of strings or {\"text\", \"model\"} objects")
    texts, sources = [], []
    for i, item in enumerate(responses):
        if isinstance(item, dict):
            unknown = set(item) - {"text", "model"}
            if unknown or "text" not in item:
                raise RecordError(f"'responses[{i}]' must be a string or an object with \"text\" and an optional \"model\"")
            texts.append(item["text"])
            sources.append(_check_source(item.get("model"), f"responses[{i}].model"))
        else:
            texts.append(item)
            sources.append(None)
    return texts, sources


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise RecordError("'metadata' must be an object")
    return metadata


def _require(obj: dict, key: str, kind: type, kind_name: str):
    if key not in obj:
        raise RecordError(f"missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise RecordError(f"'{key}' must be {kind_name}")
    return value


# --------------------------------------------------------------------------- per format


def parse_jsonl_object(obj: dict, line: int, max_responses: int) -> ImportRecord:
    if "messages" in obj and "prompt" in obj:
        raise RecordError("give either 'prompt' or 'messages', not both")
    if "messages" in obj:
        messages, source_format = check_messages(obj["messages"]), "chat"
    elif "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError("'prompt' must be a non-empty string")
        messages, source_format = [{"role": "user", "content": prompt}], "text"
    else:
        raise RecordError("missing field 'prompt' (or 'messages')")
    if "responses" not in obj:
        raise RecordError("missing field 'responses'")
    texts, sources = _split_responses(obj["responses"])
    responses = _check_responses(texts, max_responses)
    return ImportRecord(
        line, messages, responses, source_format, _check_metadata(obj.get("metadata")), sources=sources, gold=_check_gold(obj, len(responses))
    )


def _check_gold(obj: dict, n_responses: int) -> int | None:
    """`"gold": N`: a gold task whose expected answer is the N-th reply (1 = the first)."""
    value = obj.get("gold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n_responses:
        raise RecordError(f"'gold' must name the expected reply by its number, 1 to {n_responses}")
    return value - 1


def _pair_sources(obj: dict) -> list[str | None]:
    """HH and TRL: the chosen and the rejected reply's sources."""
    return [_check_source(obj.get("chosen_model"), "chosen_model"), _check_source(obj.get("rejected_model"), "rejected_model")]


def _check_gold_flag(obj: dict) -> int | None:
    """HH and TRL: `"gold": true` makes a gold task whose expected answer is the chosen reply."""
    value = obj.get("gold", False)
    if not isinstance(value, bool):
        raise RecordError("'gold' must be true (the chosen reply is the expected answer) or false")
    return 0 if value else None


HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh_transcript(transcript: str) -> list[dict]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{user, hi}, {assistant, hello}]."""
    parts = HH_TURN.split(transcript)
    if parts[0].strip():
        raise RecordError("an HH transcript must start with '\\n\\nHuman:'")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        if content.startswith(" "):
            content = content[1:]
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content})
    if not turns:
        raise RecordError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    return turns


def render_hh_transcript(messages: list[dict]) -> str:
    """Inverse of split_hh_transcript; system turns become Human turns."""
    return "".join(
        f"\n\n{'Assistant' if m['role'] == 'assistant' else 'Human'}: {m['content']}" for m in messages
    )


def parse_hh_object(obj: dict, line: int, max_responses: int) -> ImportRecord:
    chosen = _require(obj, "chosen", str, "a string")
    rejected = _require(obj, "rejected", str, "a string")
    chosen_turns, rejected_turns = split_hh_transcript(chosen), split_hh_transcript(rejected)
    if chosen_turns[-1]["role"] != "assistant" or rejected_turns[-1]["role"] != "assistant":
        raise RecordError("'chosen' and 'rejected' must both end with an Assistant turn")
    context = chosen_turns[:-1]
    if context != rejected_turns[:-1]:
        raise RecordError("'chosen' and 'rejected' do not share the same conversation before the last reply")
    messages = check_messages(context, "conversation")
    responses = _check_responses([chosen_turns[-1]["content"], rejected_turns[-1]["content"]], max_responses)
    return ImportRecord(line, messages, responses, "hh", {}, labelled=True, sources=_pair_sources(obj), gold=_check_gold_flag(obj))


def _trl_reply(value, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
            raise RecordError(f"'{key}' must hold one assistant message")
        return value[0]["content"]
    raise RecordError(f"'{key}' must be a string or a list with one assistant message")


def parse_trl_object(obj: dict, line: int, max_responses: int) -> ImportRecord:
    if "prompt" not in obj:
        raise RecordError("missing field 'prompt' (the implicit-prompt form is not supported)")
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RecordError("'prompt' is empty")
        messages, source_format = [{"role": "user", "content": prompt}], "text"
    elif isinstance(prompt, list):
        messages, source_format = check_messages(prompt, "prompt"), "chat"
    else:
        raise RecordError("'prompt' must be a string or a list of messages")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise RecordError(f"missing field '{key}'")
    if isinstance(obj["chosen"], str) != isinstance(prompt, str):
        raise RecordError("'prompt' and 'chosen' must both be plain text or both be conversational")
    responses = _check_responses(
        [_trl_reply(obj["chosen"], "chosen"), _trl_reply(obj["rejected"], "rejected")], max_responses
    )
    return ImportRecord(
        line, messages, responses, source_format, {}, labelled=True, sources=_pair_sources(obj), gold=_check_gold_flag(obj)
    )


def parse_prompt_object(obj: dict, line: int, max_responses: int) -> ImportRecord:
    """A prompts-only line (format "prompts": what model endpoints are asked to answer):
    {"prompt": str} or {"messages": [...]}, optional "metadata"; no replies."""
    if "responses" in obj or "chosen" in obj or "gold" in obj or "response" in obj:
        raise RecordError("a prompts file holds prompts only: no 'responses', 'response', 'chosen', 'rejected' or 'gold'")
    with_reply = dict(obj, responses=["-", "--"])  # parse the prompt as a jsonl line would be
    record = parse_jsonl_object(with_reply, line, max(max_responses, 2))
    record.responses = []
    return record


def parse_reply_object(obj: dict, line: int, max_responses: int) -> ImportRecord:
    """Format "replies": one model's reply to a prompt, {"prompt" | "messages", "model",
    "response", "metadata"?}; importing.services pairs the replies of one prompt."""
    if "responses" in obj:
        raise RecordError("a replies file holds one reply per line: 'response' and 'model', not 'responses'")
    model = _check_source(_require(obj, "model", str, "a model's name"), "model")
    text = _require(obj, "response", str, "a string")
    if not text.strip():
        raise RecordError("'response' is empty")
    if len(text) > MAX_REPLY_CHARS:
        raise RecordError(f"'response' is longer than {MAX_REPLY_CHARS} characters")
    record = parse_prompt_object({k: v for k, v in obj.items() if k not in ("model", "response")}, line, max_responses)
    record.responses, record.sources = [text], [model]
    return record


JSON_PARSERS = {
    "jsonl": parse_jsonl_object, "hh": parse_hh_object, "trl": parse_trl_object, "prompts": parse_prompt_object, "replies": parse_reply_object,
}
PROMPTS_FORMAT = "prompts"
REPLIES_FORMAT = "replies"


# --------------------------------------------------------------------------- reading files


def _read_lines(stream: io.BufferedIOBase, max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (line number, raw line or None when oversized, bytes consumed), streaming."""
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        consumed = len(raw)
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            # Drain the rest of the oversized line without holding it.
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(max_line_bytes + 1)
                consumed += len(raw)
            yield number, None, consumed
            continue
        yield number, raw, consumed


def iter_records(
    stream: io.BufferedIOBase, fmt: str, *, max_responses: int, max_line_bytes: int
) -> Iterator[tuple[int, ImportRecord | RecordError, int]]:
    """Yield (line, record or the error for that line, bytes consumed) for each item."""
    if fmt not in FORMATS and fmt != PROMPTS_FORMAT:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        yield from _iter_csv(stream, max_responses=max_responses, max_line_bytes=max_line_bytes)
        return
    parse = JSON_PARSERS[fmt]
    for number, raw, consumed in _read_lines(stream, max_line_bytes):
        if raw is None:
            yield number, RecordError(f"line is longer than {max_line_bytes} bytes"), consumed
            continue
        if not raw.strip():
            continue  # blank lines carry no item
        if number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        try:
            obj = jsonsafety.loads(raw)
        except ValueError as exc:  # malformed, not UTF-8, too deep, NaN / Infinity, NUL or lone surrogate
            # json's "line 1 column 2 (char 1)" counts within this one line: say the column only (#20)
            yield number, RecordError(f"malformed JSON: {exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else f"malformed JSON: {exc}"), consumed
            continue
        if not isinstance(obj, dict):
            yield number, RecordError("each line must be a JSON object"), consumed
            continue
        try:
            yield number, parse(obj, number, max_responses), consumed
        except RecordError as exc:
            yield number, exc, consumed


class _CsvLines:
    """The physical lines of a CSV byte stream as text for csv.reader, read with bounded memory.

    Each line is decoded on its own, so a decoding error belongs to its line (`bad` maps
    line numbers to reasons; the line goes on decoded with replacement characters so
    that the reader keeps its place). A line longer than max_line_bytes is drained without
    being held and handed on as an empty line (with a quote if it held an odd number of
    them, so a quoted cell that spans it still closes). A UTF-8 byte order mark, as
    spreadsheet programs write it, is dropped.
    """

    def __init__(self, stream, max_line_bytes: int):
        self.stream, self.max_line_bytes = stream, max_line_bytes
        self.bad: dict[int, str] = {}
        self.number = 0

    def __iter__(self):
        while True:
            raw = self.stream.readline(self.max_line_bytes + 1)
            if not raw:
                return
            self.number += 1
            if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                quotes = raw.count(b'"')
                while raw and not raw.endswith(b"\n"):
                    raw = self.stream.readline(self.max_line_bytes + 1)
                    quotes += raw.count(b'"')
                self.bad[self.number] = f"line is longer than {self.max_line_bytes} bytes"
                yield ('"' if quotes % 2 else "") + "\n"
                continue
            if self.number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad[self.number] = f"not valid UTF-8 ({exc.reason} at byte {exc.start + 1} of the line)"
                yield raw.decode("utf-8", "replace")

    def problem(self, first: int, last: int) -> tuple[int, str] | None:
        """The first bad physical line in first..last, with its reason."""
        for number in range(first, last + 1):
            if number in self.bad:
                return number, self.bad[number]
        return None


def _csv_cell_json(row: dict, column: str):
    try:
        return jsonsafety.loads(row[column])
    except ValueError as exc:
        raise RecordError(f"'{column}' is not valid JSON: {exc}") from exc


def _iter_csv(stream, *, max_responses: int, max_line_bytes: int):
    lines = _CsvLines(stream, max_line_bytes)
    csv.field_size_limit(max_line_bytes)
    reader = csv.reader(iter(lines))
    try:
        header = next(reader, None) or []
    except csv.Error as exc:
        yield 1, RecordError(f"unreadable CSV header: {exc}"), 0
        return
    bad_header = lines.problem(1, reader.line_num)
    if bad_header:
        yield bad_header[0], RecordError(f"unreadable CSV header: {bad_header[1]}"), 0
        return
    response_columns = sorted(
        (c for c in header if re.fullmatch(r"response_\d+", c)), key=lambda c: int(c.split("_")[1])
    )
    if not ({"prompt", "messages"} & set(header)) or len(response_columns) < 2:
        yield 1, RecordError("CSV header needs 'prompt' or 'messages' and response_1, response_2, ..."), 0
        return
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over the size limit; the reader goes on at the next line
            yield start, RecordError(f"malformed CSV: {exc}"), 0
            continue
        bad = lines.problem(start, reader.line_num)
        if bad:
            yield bad[0], RecordError(bad[1]), 0
            continue
        if not cells:
            continue  # a blank line carries no item
        try:
            if len(cells) > len(header):
                raise RecordError("more cells than header columns")
            row = dict(zip(header, cells))
            kept = [c for c in response_columns if row.get(c)]
            obj: dict = {"responses": [
                {"text": row[c], "model": row[f"model_{c.split('_')[1]}"]} if row.get(f"model_{c.split('_')[1]}") else row[c] for c in kept
            ]}
            if row.get("gold"):  # the number of the response_N column; empty cells are left out of the replies
                column = f"response_{row['gold'].strip()}"
                if column not in kept:
                    raise RecordError(f"'gold' must be the number of a non-empty response column, not {row['gold'][:20]!r}")
                obj["gold"] = kept.index(column) + 1
            if row.get("messages"):
                obj["messages"] = _csv_cell_json(row, "messages")
            else:
                obj["prompt"] = row.get("prompt") or ""
            if row.get("metadata"):
                obj["metadata"] = _csv_cell_json(row, "metadata")
            unstorable = jsonsafety.first_unstorable(obj)
            if unstorable:
                raise RecordError(f"{unstorable}: contains a NUL character, which cannot be stored")
            yield start, parse_jsonl_object(obj, start, max_responses), 0
        except RecordError as exc:
            yield start, exc, 0


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
