"""Import benchmark: generate a file of N lines, import it with `manage.py import_data`
in a child process, and print lines/s and the child's peak resident memory; then import
it again (a no-op by content hashes). Run with DEBUG=0 as in production (with DEBUG=1
Django keeps the last 9000 SQL statements in memory).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_import python bench/import_bench.py --lines 100000
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_site.settings")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    import django

    django.setup()
    from labeling.models import ComparisonTask

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i in range(args.lines):
            f.write(json.dumps({"prompt": f"prompt {i} " + "lorem ipsum " * 20, "responses": [f"a{i} " * 30, f"b{i} " * 30]}) + "\n")
        path = f.name
    size_mb = os.path.getsize(path) / 1e6
    project = f"bench-import-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "manage.py", "import_data", path, "--project", project, "--format", "jsonl", "--no-progress"]
    root = Path(__file__).resolve().parent.parent
    start = time.perf_counter()
    subprocess.run(command, cwd=root, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    start = time.perf_counter()
    subprocess.run(command, cwd=root, check=True, stdout=subprocess.DEVNULL)
    reimport = time.perf_counter() - start
    tasks = ComparisonTask.objects.filter(project__name=project).count()
    os.unlink(path)
    print(json.dumps({
        "lines": args.lines, "file_mb": round(size_mb, 1), "tasks": tasks, "seconds": round(elapsed, 1),
        "lines_per_s": round(args.lines / elapsed), "reimport_seconds": round(reimport, 1),
        "peak_rss_mb": round(peak_rss_mb),
    }))


if __name__ == "__main__":
    main()
