"""Replies tied in one group of a judgement's ranking are stored sorted by id, so that the
same verdict is the same stored value whatever order the annotator saw the replies in
(the task browser's "annotators disagree" filter compares rankings in SQL)."""

from django.db import migrations

CHUNK = 2000


def sort_groups(apps, schema_editor):
    Judgement = apps.get_model("labeling", "Judgement")
    changed = []
    for judgement in Judgement.objects.only("pk", "ranking").iterator(chunk_size=CHUNK):
        ranking = judgement.ranking
        if not isinstance(ranking, list):
            continue
        canonical = [sorted(group) if isinstance(group, list) else group for group in ranking]
        if canonical != ranking:
            judgement.ranking = canonical
            changed.append(judgement)
        if len(changed) >= CHUNK:
            Judgement.objects.bulk_update(changed, ["ranking"])
            changed = []
    if changed:
        Judgement.objects.bulk_update(changed, ["ranking"])


class Migration(migrations.Migration):
    dependencies = [("labeling", "0005_project_assignment")]

    operations = [migrations.RunPython(sort_groups, migrations.RunPython.noop)]
