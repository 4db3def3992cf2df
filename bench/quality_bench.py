"""Quality statistics at scale (#10): every figure of the quality page for a project of N
judgements (default 1,000,000) by A annotators (default 200), with the time and peak memory
of each part.

The project is generated in PostgreSQL with INSERT ... SELECT generate_series (a minute or
two, not timed): N / 3 pairwise tasks, each judged by 3 distinct annotators; replies from
6 sources; verdicts 45% / 45% / 10% (#1, #2, tie) with a bias per annotator; shuffled
display orders; times on task; dates over 12 weeks; two reward-model versions that scored
every reply. Then it times what the page does: reading the judgements once
(labeling.quality_table.build_table: a few queries whose answers numpy reads whole),
agreement (alpha x 3 with 1,000 bootstrap draws, per week, kappa per pair, majority),
annotator quality and flags, the leaderboard (1,000 draws), and the reward models'
agreement with people per day.

    createdb -h 127.0.0.1 -U postgres bench_quality
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_quality python bench/quality_bench.py [--judgements 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_site.settings")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(project_name: str, judgements: int, annotators: int) -> int:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from labeling.models import Project

    Project.objects.filter(name=project_name).delete()
    project = Project.objects.create(name=project_name, overlap_k=3, gold_rate=0)
    users = [get_user_model().objects.get_or_create(username=f"qb-{i}")[0].pk for i in range(annotators)]
    tasks = judgements // 3
    p = project.pk
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO labeling_prompt (project_id, messages, source_format, source, metadata, content_hash, created_at) "
            "SELECT %s, jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'prompt ' || g)), 'text', 'bench', '{}'::jsonb, md5(g::text), now() "
            "FROM generate_series(1, %s) g",
            [p, tasks],
        )
        cursor.execute(
            "INSERT INTO labeling_response (prompt_id, text, text_hash, origin, generation_params, created_at) "
            "SELECT pr.id, 'reply ' || r || repeat('x', (random() * 300)::int), md5(pr.id || '-' || r), 'model-' || ((pr.id * 7 + r * 3) %% 6), '{}'::jsonb, now() "
            "FROM labeling_prompt pr CROSS JOIN generate_series(0, 1) r WHERE pr.project_id = %s",
            [p],
        )
        cursor.execute(
            "INSERT INTO labeling_comparisontask (project_id, prompt_id, response_set_hash, priority, status, is_gold, judgement_count, order_score, created_at) "
            "SELECT %s, id, content_hash, 0, 'complete', false, 3, 0, now() FROM labeling_prompt WHERE project_id = %s",
            [p, p],
        )
        cursor.execute(
            "INSERT INTO labeling_taskresponse (task_id, response_id, position) "
            "SELECT t.id, r.id, row_number() OVER (PARTITION BY t.id ORDER BY r.id) - 1 "
            "FROM labeling_comparisontask t JOIN labeling_response r ON r.prompt_id = t.prompt_id WHERE t.project_id = %s",
            [p],
        )
        cursor.execute(
            """
            WITH pairs AS (
                SELECT t.id AS task, min(tr.response_id) AS r0, max(tr.response_id) AS r1
                FROM labeling_comparisontask t JOIN labeling_taskresponse tr ON tr.task_id = t.id
                WHERE t.project_id = %(p)s GROUP BY t.id
            ), draws AS (
                SELECT task, r0, r1, k, (%(users)s::bigint[])[1 + ((task * 7 + k * 13) %% %(a)s)] AS annotator,
                       random() AS v, random() < 0.5 AS swapped, random() AS d
                FROM pairs CROSS JOIN generate_series(0, 2) k
            ), verdicts AS (
                SELECT *, CASE WHEN v < 0.45 + 0.002 * (annotator %% 20) THEN 0 WHEN v < 0.9 THEN 1 ELSE 2 END AS winner FROM draws
            )
            INSERT INTO labeling_judgement (task_id, annotator_id, choice, ranking, strength, rationale, flags, reply_flags,
                display_order, time_spent_ms, idempotency_key, source, gold_correct, created_at, revision)
            SELECT task, annotator,
                CASE WHEN winner = 2 THEN 'tie' WHEN (winner = 0) <> swapped THEN 'A' ELSE 'B' END,
                CASE winner WHEN 0 THEN jsonb_build_array(jsonb_build_array(r0), jsonb_build_array(r1))
                            WHEN 1 THEN jsonb_build_array(jsonb_build_array(r1), jsonb_build_array(r0))
                            ELSE jsonb_build_array(jsonb_build_array(r0, r1)) END,
                CASE WHEN winner = 2 THEN NULL ELSE 1 + (d * 4)::int %% 4 END, '', '[]'::jsonb, '{}'::jsonb,
                CASE WHEN swapped THEN jsonb_build_array(r1, r0) ELSE jsonb_build_array(r0, r1) END,
                (1000 + d * 20000)::int, '', 'annotator', NULL, now() - (d * 84) * interval '1 day', 0
            FROM verdicts
            """,
            {"p": p, "users": users, "a": annotators},
        )
        # two reward-model versions that scored every reply (the reward-model-versus-people chart)
        from training.models import ModelVersion

        for number in (1, 2):
            version = ModelVersion.objects.create(project=project, kind="reward", number=number, artifact_path="/bench")
            cursor.execute(
                "INSERT INTO training_replyscore (response_id, version_id, reward, scored_at) "
                "SELECT r.id, %s, random(), now() FROM labeling_response r JOIN labeling_prompt p ON p.id = r.prompt_id WHERE p.project_id = %s",
                [version.pk, p],
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return project.pk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judgements", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="keep the generated project of an earlier run")
    args = parser.parse_args()
    import django

    django.setup()
    from django.core.management import call_command

    from labeling import quality_data
    from labeling.models import Judgement, Project

    call_command("migrate", verbosity=0)
    name = f"quality-bench-{args.judgements}-{args.annotators}"
    started = time.perf_counter()
    project = Project.objects.filter(name=name).first() if args.reuse else None
    if project is None:
        project = Project.objects.get(pk=generate(name, args.judgements, args.annotators))
    setup_s = time.perf_counter() - started
    result = {"judgements": Judgement.objects.filter(task__project=project).count(), "annotators": args.annotators, "setup_seconds": round(setup_s, 1)}
    timings = {}
    started = time.perf_counter()
    rows: list = []
    for part, compute in (
        ("read", lambda: rows.append(quality_data.judgement_table(project))),
        ("agreement", lambda: quality_data.agreement_summary(project, table=rows[0])),
        ("annotators", lambda: quality_data.annotator_summary(project, table=rows[0])),
        ("leaderboard", lambda: quality_data.leaderboard_summary(project, table=rows[0])),
        ("reward_vs_people", lambda: quality_data.reward_vs_people(project, table=rows[0])),
    ):
        t = time.perf_counter()
        output = compute()
        timings[part] = round(time.perf_counter() - t, 2)
        if part == "agreement":
            result["alpha_nominal"] = output["alpha"]["nominal"]
        if part == "leaderboard":
            result["sources"] = [(row["name"], round(row["elo"], 1)) for row in output["sources"]]
    result.update(seconds=timings, total_seconds=round(time.perf_counter() - started, 2), peak_rss_mb=round(peak_mb()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
