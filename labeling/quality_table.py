"""A project's human judgements as flat numpy columns, read in a few queries (#10).

The quality statistics (labeling/quality_data.py) need, per judgement, a dozen numbers
(annotator, verdict, strength, time, gold outcome, day, the reply that won...), never the
rows themselves. Decoding a million JSON rankings and display orders in Python costs more
than every statistic together, so the database does it: one query turns each judgement
into integers (the verdict's code, the first replies of its ranking groups, the first two
ids of its display order, the group sizes, the epoch time), and on PostgreSQL the result
comes back as `COPY ... TO STDOUT (FORMAT binary)`, whose fixed-width rows numpy reads
in one `frombuffer`. The task positions of replies and the reply lengths and sources are
read the same way and joined in numpy (searchsorted on sorted keys).

The vectorised path covers the judgements every form of the app writes for a two-reply
task: [[winner], [loser]] for A / B and [[x, y]] (one tied group) for tie / both bad, both
replies being the task's, shown in a display order of two. Every other judgement (K > 2
rankings, anything unusual an import or an old version wrote) is read again with its
JSON and turned into the same columns by `_row_columns`, the plain Python definition of
every column; `build_table(..., vectorize=False)` sends every judgement that way, and the
tests check that both paths give identical tables.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

import numpy as np
from django.db import connection, connections, transaction
from django.utils import timezone

from .models import Project

CHOICE_CODES = {"A": 0, "B": 1, "tie": 2, "both_bad": 3, "ranking": 4}
TIE, BOTH_BAD = 2, 3
UNIX_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()


@dataclass
class JudgementTable:
    """Columns per human judgement, in id order, and flat lists built from them.

    Per judgement: id, task, annotator, choice (CHOICE_CODES), strength (-1: none),
    time_ms (NaN: none), gold (-1 none, 0 failed, 1 passed), epoch (seconds), day (local
    date ordinal), n_shown (replies in the display order), shown_winner (display position
    of a sole winner, else -1), chose_longer (-1 unknown or equal length, 0, 1), nominal
    and ordinal (pairwise tasks, in task positions; -1 where not defined).

    Per ranked reply (`entry_*`): the judgement's row index, the reply id, its group (0 =
    best). Per reply of a K > 2 ranking (`rank_*`): task, task position, annotator, group,
    day. Per reply of the project (`response_*`): id (sorted), length, source index, with
    `source_names`."""

    ids: np.ndarray
    task: np.ndarray
    annotator: np.ndarray
    choice: np.ndarray
    strength: np.ndarray
    time_ms: np.ndarray
    gold: np.ndarray
    epoch: np.ndarray
    day: np.ndarray
    n_shown: np.ndarray
    shown_winner: np.ndarray
    chose_longer: np.ndarray
    nominal: np.ndarray
    ordinal: np.ndarray
    entry_row: np.ndarray
    entry_response: np.ndarray
    entry_group: np.ndarray
    rank: dict[str, np.ndarray] = field(default_factory=dict)
    response_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    response_length: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    response_source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source_names: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def lookup(self, response_ids: np.ndarray, values: np.ndarray, missing=-1) -> np.ndarray:
        """values[response] for each id (values aligned with response_id); `missing` where unknown."""
        return lookup_sorted(self.response_id, values, response_ids, missing)


# ------------------------------------------------------------------------ reading columns


def _epoch(expression: str) -> str:
    if connection.vendor == "postgresql":
        return f"date_part('epoch', {expression})"
    return f"(julianday({expression}) - 2440587.5) * 86400.0"


def fetch_columns(sql: str, params: list, kinds: str, order_by: int = 1) -> list[np.ndarray]:
    """Run a SELECT whose columns are never NULL and return one array per column, rows
    sorted by the first `order_by` columns. `kinds`: one letter per column, "i" (integer,
    read as int64), "f" (float64) or "j" (a JSON list of ids, parsed by parse_id_lists
    into an (n, 3) array: shape, first id, second id).

    PostgreSQL: each number column comes back as one array (array_agg) in PostgreSQL's
    binary array format (array_send), whose fixed-width elements numpy reads with one
    frombuffer, and each JSON column as one text of the rows' JSON joined by newlines
    (jsonb's text never holds a raw newline), parsed in numpy; a million rows are not
    turned into Python tuples one by one. The aggregates of one query see the rows in
    the same order, so the columns stay aligned; the rows are then sorted in numpy.
    Elsewhere (SQLite): a plain cursor, and the same parser."""
    names = [f"c{i}" for i in range(len(kinds))]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} ORDER BY {', '.join(str(i + 1) for i in range(order_by))}", params)
            rows = cursor.fetchall()
        out = []
        for i, kind in enumerate(kinds):
            if kind == "j":
                text = "\n".join(str(row[i]).replace("\n", " ") for row in rows)
                out.append(parse_id_lists(text.encode("utf-8"), len(rows)))
            else:
                out.append(np.asarray([row[i] for row in rows], dtype=np.int64 if kind == "i" else float).reshape(-1))
        return out
    aggregates = ", ".join(
        f"string_agg({n}::text, E'\\n')" if k == "j" else f"array_send(array_agg({n}::{'int8' if k == 'i' else 'float8'}))"
        for n, k in zip(names, kinds)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), {aggregates} FROM ({sql}) AS q ({', '.join(names)})", params)
        count, *values = cursor.fetchone()
    columns = [
        parse_id_lists((data or "").encode("utf-8"), count) if k == "j" else _array_from_send(data, k) for data, k in zip(values, kinds)
    ]
    order = np.lexsort(columns[:order_by][::-1]) if count and order_by else np.arange(count)
    return [column[order] for column in columns]


def _array_from_send(data, kind: str) -> np.ndarray:
    """A one-dimensional int8[] / float8[] without NULLs from PostgreSQL's binary array format
    (array_send): a 20-byte header, then each element as a 4-byte length and 8 bytes."""
    dtype = np.int64 if kind == "i" else np.float64
    if data is None:  # array_agg of no rows
        return np.zeros(0, dtype=dtype)
    data = bytes(data)
    ndim, has_nulls = struct.unpack(">ii", data[:8])
    if ndim == 0:
        return np.zeros(0, dtype=dtype)
    if ndim != 1 or has_nulls:
        raise RuntimeError("expected a one-dimensional array without NULLs")
    element = np.dtype([("length", ">i4"), ("value", ">i8" if kind == "i" else ">f8")])
    return np.frombuffer(data, dtype=element, offset=20)["value"].astype(dtype)


ID_LIST_SHAPES = {1: "[[a], [b]]", 2: "[[a, b]]", 3: "[a, b]"}


def parse_id_lists(text: bytes, n_rows: int) -> np.ndarray:
    """Newline-separated JSON texts, one per row, as an (n_rows, 3) int64 array: the shape
    (ID_LIST_SHAPES: 1 "[[a], [b]]" a two-group ranking, 2 "[[a, b]]" one tied group, 3
    "[a, b]" a display order of two; 0 anything else) and the two ids (-1 when shape 0).

    Vectorised over the bytes: digit runs are the numbers; a row has a shape when its
    characters other than its two digit runs are exactly the shape's (their count, the
    two first and two last characters, and the separator after the first run); with
    valid JSON that leaves no other possibility."""
    out = np.full((n_rows, 3), -1, dtype=np.int64)
    out[:, 0] = 0
    if n_rows == 0:
        return out
    b = np.frombuffer(text, dtype=np.uint8)
    newline = np.flatnonzero(b == 10)
    if newline.size != n_rows - 1:
        raise ValueError("row count does not match the text")
    start = np.concatenate([[0], newline + 1])
    end = np.concatenate([newline, [b.size]])  # exclusive
    length = end - start
    digit = (b >= 48) & (b <= 57)
    digits_before = np.concatenate([[0], np.cumsum(digit, dtype=np.int32)])  # digits in b[:i]
    run_start = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1
    if digit.size and digit[0]:
        run_start = np.concatenate([[0], run_start])
    run_end = np.flatnonzero(digit[:-1] & ~digit[1:]) + 1
    if digit.size and digit[-1]:
        run_end = np.concatenate([run_end, [b.size]])
    run_row = np.searchsorted(start, run_start, side="right") - 1
    runs_per_row = np.bincount(run_row, minlength=n_rows)
    digits_per_row = digits_before[end] - digits_before[start]
    other = length - digits_per_row
    first_run = np.cumsum(np.concatenate([[0], runs_per_row[:-1]]))
    two = runs_per_row == 2
    rows = np.flatnonzero(two)
    r1, r2 = first_run[rows], first_run[rows] + 1
    run_length = run_end - run_start
    ok = (run_length[r1] <= 18) & (run_length[r2] <= 18)

    def at(positions):
        return b[np.clip(positions, 0, b.size - 1)]

    s0, s1 = at(start[rows]), at(start[rows] + 1)
    e1, e2 = at(end[rows] - 1), at(end[rows] - 2)
    after = [at(run_end[r1] + k) for k in range(4)]
    L, R, C, SP = ord("["), ord("]"), ord(","), ord(" ")
    ranked = ok & (other[rows] == 8) & (s0 == L) & (s1 == L) & (e1 == R) & (e2 == R) & (after[0] == R) & (after[1] == C) & (after[2] == SP) & (after[3] == L)
    tied = ok & (other[rows] == 6) & (s0 == L) & (s1 == L) & (e1 == R) & (e2 == R) & (after[0] == C) & (after[1] == SP)
    shown = ok & (other[rows] == 4) & (s0 == L) & (e1 == R) & (after[0] == C) & (after[1] == SP)
    shape = np.where(ranked, 1, np.where(tied, 2, np.where(shown, 3, 0)))
    good = rows[shape > 0]
    r1, r2 = r1[shape > 0], r2[shape > 0]
    values = np.zeros(run_start.size, dtype=np.int64)
    wanted = np.concatenate([r1, r2])
    for k in range(int(run_length[wanted].max()) if wanted.size else 0):
        more = run_length[wanted] > k
        values[wanted[more]] = values[wanted[more]] * 10 + (b[run_start[wanted[more]] + k].astype(np.int64) - 48)
    out[good, 0] = shape[shape > 0]
    out[good, 1] = values[r1]
    out[good, 2] = values[r2]
    return out


def lookup_sorted(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing) -> np.ndarray:
    """values[index of wanted in keys] (keys sorted, unique); `missing` where absent. Keys
    that fill most of their range (database ids) are looked up through a dense table,
    others by binary search."""
    wanted = np.asarray(wanted, dtype=np.int64)
    dtype = np.result_type(values.dtype, np.min_scalar_type(missing) if isinstance(missing, int) else type(missing))
    if keys.size == 0:
        return np.full(wanted.shape, missing, dtype=dtype)
    low, span = int(keys[0]), int(keys[-1]) - int(keys[0]) + 1
    if span <= 4 * keys.size + 1024:
        index = np.full(span, -1, dtype=np.int64)
        index[keys - low] = np.arange(keys.size)
        inside = (wanted >= low) & (wanted < low + span)
        at = np.where(inside, index[np.clip(wanted - low, 0, span - 1)], -1)
        return np.where(at >= 0, values[np.maximum(at, 0)], missing).astype(dtype, copy=False)
    at = np.clip(np.searchsorted(keys, wanted), 0, keys.size - 1)
    return np.where(keys[at] == wanted, values[at], missing).astype(dtype, copy=False)


def local_days(epoch: np.ndarray) -> np.ndarray:
    """Date ordinals of the instants in the current time zone (Django's TIME_ZONE), as
    timezone.localtime(t).date().toordinal() gives them. The UTC offset is looked up once
    per quarter hour that occurs (offsets change on quarter hours at most)."""
    if epoch.size == 0:
        return np.zeros(0, dtype=np.int64)
    zone = timezone.get_current_timezone()
    quarters = np.floor(epoch / 900).astype(np.int64)
    unique, inverse = np.unique(quarters, return_inverse=True)
    offsets = np.array(
        [datetime.fromtimestamp(int(q) * 900, dt_timezone.utc).astimezone(zone).utcoffset().total_seconds() for q in unique]
    )
    return (np.floor((epoch + offsets[inverse.reshape(-1)]) / 86400).astype(np.int64) + UNIX_EPOCH_ORDINAL)


def _responses(project: Project) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Every reply of the project: ids (sorted), text lengths, source indexes, source names
    (sorted). A reply's source is the policy version that wrote it ("policy v3"), else its
    recorded origin (an imported file, "existing reply", ...; "imported" when empty).
    Replies are read by the range of the project's prompt ids, then filtered."""
    from training.models import ModelVersion

    prompts = project_ids("labeling_prompt", project)
    if prompts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), []
    bounds = [int(prompts[0]), int(prompts[-1])]
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT origin FROM labeling_response WHERE prompt_id BETWEEN %s AND %s AND model_version_id IS NULL", bounds)
        origins = sorted(row[0] for row in cursor.fetchall())
    if connection.vendor == "postgresql":
        origin_index, origin_params = "COALESCE(array_position(%s::text[], r.origin) - 1, -1)", [origins]
    else:  # a CASE over the few origins
        origin_index = "CASE r.origin " + " ".join("WHEN %s THEN " + str(i) for i in range(len(origins))) + " ELSE -1 END" if origins else "-1"
        origin_params = list(origins)
    ids, lengths, version, origin, prompt = fetch_columns(
        f"SELECT r.id, LENGTH(r.text), COALESCE(r.model_version_id, -1), {origin_index}, r.prompt_id FROM labeling_response r "
        "WHERE r.prompt_id BETWEEN %s AND %s",
        origin_params + bounds, "iiiii",
    )
    mine = is_in_sorted(prompts, prompt)
    ids, lengths, version, origin = ids[mine], lengths[mine], version[mine], origin[mine]
    version_ids = np.unique(version[version >= 0])
    labels = {v.pk: f"{v.kind} v{v.number}" for v in ModelVersion.objects.filter(pk__in=version_ids.tolist())}
    used_origins = np.unique(origin[version < 0])
    keys = [labels[int(pk)] for pk in version_ids] + [origins[i] or "imported" if i >= 0 else "imported" for i in used_origins.tolist()]
    names = sorted(set(keys))
    index_of_key = np.array([names.index(key) for key in keys] or [0], dtype=np.int64)
    key = np.where(version >= 0, np.searchsorted(version_ids, version), version_ids.size + np.searchsorted(used_origins, origin))
    return ids, lengths, index_of_key[np.clip(key, 0, index_of_key.size - 1)], names


def project_ids(table: str, project: Project) -> np.ndarray:
    """Sorted ids of the project's rows of `table` (labeling_prompt, labeling_comparisontask)."""
    return fetch_columns(f"SELECT id FROM {table} WHERE project_id = %s", [project.pk], "i")[0]


def is_in_sorted(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values in keys (sorted, unique), as a boolean array."""
    return lookup_sorted(keys, np.ones(keys.size, dtype=bool), values, False)


def _task_positions(tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(task id, response id, position) of every reply of the given tasks (sorted ids),
    sorted by (task, response). The rows come from the range of the ids (an index range
    scan instead of a join) and are then kept when their task is one of `tasks`."""
    if tasks.size == 0:
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    task, response, position = fetch_columns(
        "SELECT tr.task_id, tr.response_id, tr.position FROM labeling_taskresponse tr WHERE tr.task_id BETWEEN %s AND %s",
        [int(tasks[0]), int(tasks[-1])], "iii", order_by=2,
    )
    mine = is_in_sorted(tasks, task)
    return task[mine], response[mine], position[mine]


JUDGEMENT_COLUMNS = ("id", "task", "annotator", "choice", "strength", "time_ms", "gold", "epoch", "ranking", "display_order")


def _judgement_columns(tasks: np.ndarray) -> dict[str, np.ndarray]:
    """The JUDGEMENT_COLUMNS of every human judgement of the given tasks (sorted ids);
    ranking and display_order as parse_id_lists gives them. As in _task_positions, the
    rows come from the range of the task ids and are then filtered."""
    choice = "CASE j.choice " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in CHOICE_CODES.items()) + " ELSE -1 END"
    columns = [
        "j.id", "j.task_id", "j.annotator_id", choice, "COALESCE(j.strength, -1)", "COALESCE(j.time_spent_ms, -1)",
        "CASE WHEN j.gold_correct IS NULL THEN -1 WHEN j.gold_correct THEN 1 ELSE 0 END", _epoch("j.created_at"),
        "j.ranking", "j.display_order",
    ]
    sql = (
        f"SELECT {', '.join(columns)} FROM labeling_judgement j WHERE j.task_id BETWEEN %s AND %s AND j.source = 'annotator'"
    )
    bounds = [int(tasks[0]), int(tasks[-1])] if tasks.size else [1, 0]
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL work_mem = '64MB'")  # one hash join in memory, not in batches on disk
        columns = dict(zip(JUDGEMENT_COLUMNS, fetch_columns(sql, bounds, "iiiiiiifjj")))
    mine = is_in_sorted(tasks, columns["task"])
    return {name: column[mine] for name, column in columns.items()}


# ------------------------------------------------------------------ one judgement, in Python


def _row_columns(choice: str, strength, ranking, order, where: dict[int, int], lengths: dict[int, int]) -> dict:
    """Every derived column of one judgement, from its stored JSON: the definition the
    vectorised path reproduces. `where`: {reply id: task position} of its task."""
    order = list(order or []) if isinstance(order, list) else []
    groups = [g for g in ranking if isinstance(g, list)] if isinstance(ranking, list) else []
    top = groups[0] if groups else []
    sole = choice not in ("tie", "both_bad") and len(top) == 1
    shown_winner = order.index(top[0]) if sole and top[0] in order else -1
    chose_longer = -1
    if len(order) == 2 and shown_winner >= 0:
        mine, theirs = lengths.get(order[shown_winner]), lengths.get(order[1 - shown_winner])
        if mine is not None and theirs is not None and mine != theirs:
            chose_longer = int(mine > theirs)
    nominal = ordinal = -1
    if len(where) == 2:
        if choice == "tie":
            nominal, ordinal = TIE, 4
        elif choice == "both_bad":
            nominal, ordinal = BOTH_BAD, 4
        else:
            winner = where.get(top[0]) if top and not isinstance(top[0], list) else None
            if winner in (0, 1):
                nominal = winner
                ordinal = (4 - strength if winner == 0 else 4 + strength) if strength else -1
    entries = [(response, group_index) for group_index, group in enumerate(groups) for response in group if isinstance(response, int)]
    return {
        "n_shown": len(order), "shown_winner": shown_winner, "chose_longer": chose_longer,
        "nominal": nominal, "ordinal": ordinal, "entries": entries,
    }


def _slow_rows(project: Project, ids: np.ndarray, positions: dict, lengths: dict) -> dict[int, dict]:
    from .models import Judgement

    out = {}
    for start in range(0, ids.size, 5000):
        chunk = ids[start : start + 5000].tolist()
        for pk, task_id, choice, strength, ranking, order in Judgement.objects.filter(pk__in=chunk).values_list(
            "pk", "task_id", "choice", "strength", "ranking", "display_order"
        ):
            out[pk] = _row_columns(choice, strength, ranking, order, positions.get(task_id, {}), lengths)
    return out


# ---------------------------------------------------------------------------- the table


def in_parallel(*calls):
    """The calls' results, the first in this thread and the others in threads of their own,
    each with its own database connection: the queries run side by side in their
    PostgreSQL backends while this process parses what came back. Sequential inside a
    transaction (another connection would not see its rows: tests, a caller's atomic
    block) and on SQLite."""
    if connection.vendor != "postgresql" or connection.in_atomic_block or len(calls) < 2:
        return [call() for call in calls]
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index, call):
        try:
            results[index] = call()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)
        finally:
            connections.close_all()  # this thread's connections only

    threads = [threading.Thread(target=run, args=(index, call), daemon=True) for index, call in enumerate(calls[1:], 1)]
    for thread in threads:
        thread.start()
    try:
        results[0] = calls[0]()
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results


def build_table(project: Project, *, vectorize: bool = True) -> JudgementTable:
    """The project's human judgements as a JudgementTable (see the module docstring)."""
    tasks = project_ids("labeling_comparisontask", project)
    c, replies, positions_of_tasks = in_parallel(lambda: _judgement_columns(tasks), lambda: _responses(project), lambda: _task_positions(tasks))
    response_id, response_length, response_source, names = replies
    tr_task, tr_response, tr_position = positions_of_tasks

    # replies per task, and the replies at positions 0 and 1 of each two-reply task
    tasks, task_start, counts = np.unique(tr_task, return_index=True, return_counts=True)
    n_replies = lookup_sorted(tasks, counts, c["task"], 0)
    at = np.minimum(task_start + 1, max(tr_task.size - 1, 0))
    reply0 = np.where(tr_position[task_start] == 0, tr_response[task_start], tr_response[at])
    reply1 = np.where(tr_position[task_start] == 0, tr_response[at], tr_response[task_start])
    two = n_replies == 2
    reply0 = np.where(two, lookup_sorted(tasks, reply0, c["task"], -1), -1)
    reply1 = np.where(two, lookup_sorted(tasks, reply1, c["task"], -1), -1)

    def position(response):
        """Task position (0 or 1) of a reply of a two-reply task; -1 otherwise."""
        return np.where(two & (response >= 0), np.where(response == reply0, 0, np.where(response == reply1, 1, -1)), -1)

    shape, first, second = c["ranking"].T
    shown_shape, d0, d1 = c["display_order"].T
    pos_first, pos_second = position(first), position(second)
    d_pos0, d_pos1 = position(d0), position(d1)
    choice = c["choice"]
    sole = (choice == 0) | (choice == 1)
    tied = (choice == TIE) | (choice == BOTH_BAD)
    fast = (
        (n_replies == 2) & (shown_shape == 3) & (d_pos0 >= 0) & (d_pos1 >= 0) & (d0 != d1)
        & ((sole & (shape == 1)) | (tied & (shape == 2))) & (pos_first >= 0) & (pos_second >= 0) & (first != second)
    )
    if not vectorize:
        fast[:] = False

    strength = c["strength"]
    n_shown = np.where(fast, 2, -1)
    shown_winner = np.where(fast & sole, np.where(d0 == first, 0, 1), -1)
    length0 = lookup_sorted(response_id, response_length, d0, -1)
    length1 = lookup_sorted(response_id, response_length, d1, -1)
    mine = np.where(shown_winner == 0, length0, length1)
    theirs = np.where(shown_winner == 0, length1, length0)
    chose_longer = np.where((shown_winner >= 0) & (length0 >= 0) & (length1 >= 0) & (mine != theirs), (mine > theirs).astype(np.int64), -1)
    nominal = np.where(fast, np.where(sole, pos_first, choice), -1)
    ordinal = np.where(fast & tied, 4, -1)
    with_strength = fast & sole & (strength > 0)
    ordinal = np.where(with_strength, np.where(pos_first == 0, 4 - strength, 4 + strength), ordinal)

    rows = np.nonzero(fast)[0]
    entry_row = [rows, rows]
    entry_response = [first[rows], second[rows]]
    entry_group = [np.zeros(rows.size, np.int64), np.where(sole[rows], 1, 0)]

    rank = {k: [] for k in ("unit_task", "unit_position", "annotator", "rank", "row")}
    slow = np.nonzero(~fast)[0]
    if slow.size:
        slow_tasks = np.unique(c["task"][slow])
        positions: dict[int, dict[int, int]] = {}
        in_slow = np.isin(tr_task, slow_tasks)
        for task_id, response, where in zip(tr_task[in_slow].tolist(), tr_response[in_slow].tolist(), tr_position[in_slow].tolist()):
            positions.setdefault(task_id, {})[response] = where
        lengths = dict(zip(response_id.tolist(), response_length.tolist()))
        values = _slow_rows(project, c["id"][slow], positions, lengths)
        extra_row, extra_response, extra_group = [], [], []
        for row in slow.tolist():
            v = values[int(c["id"][row])]
            n_shown[row], shown_winner[row], chose_longer[row] = v["n_shown"], v["shown_winner"], v["chose_longer"]
            nominal[row], ordinal[row] = v["nominal"], v["ordinal"]
            where = positions.get(int(c["task"][row]), {})
            for response, group in v["entries"]:
                extra_row.append(row)
                extra_response.append(response)
                extra_group.append(group)
                if len(where) > 2 and response in where:
                    rank["unit_task"].append(int(c["task"][row]))
                    rank["unit_position"].append(where[response])
                    rank["annotator"].append(int(c["annotator"][row]))
                    rank["rank"].append(group)
                    rank["row"].append(row)
        entry_row.append(np.asarray(extra_row, dtype=np.int64))
        entry_response.append(np.asarray(extra_response, dtype=np.int64))
        entry_group.append(np.asarray(extra_group, dtype=np.int64))

    epoch = c["epoch"]
    day = local_days(epoch)
    entry_row_all = np.concatenate(entry_row)
    entry_order = np.argsort(entry_row_all, kind="stable")
    rank_arrays = {k: np.asarray(v, dtype=np.int64) for k, v in rank.items()}
    rank_arrays["day"] = day[rank_arrays["row"]] if rank_arrays["row"].size else np.zeros(0, np.int64)
    return JudgementTable(
        ids=c["id"], task=c["task"], annotator=c["annotator"], choice=choice, strength=strength,
        time_ms=np.where(c["time_ms"] >= 0, c["time_ms"].astype(float), np.nan), gold=c["gold"], epoch=epoch, day=day,
        n_shown=n_shown, shown_winner=shown_winner, chose_longer=chose_longer, nominal=nominal, ordinal=ordinal,
        entry_row=entry_row_all[entry_order], entry_response=np.concatenate(entry_response)[entry_order],
        entry_group=np.concatenate(entry_group)[entry_order], rank=rank_arrays,
        response_id=response_id, response_length=response_length, response_source=response_source, source_names=names,
    )
