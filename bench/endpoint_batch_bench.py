"""Batch generation from model endpoints: replies per second of a run of kind "endpoints"
(training/endpoint_runs.py, in this process, on PostgreSQL: requests, retries bookkeeping,
the comparison tasks written as prompts complete) against calling the same endpoints
directly with the same concurrency (a thread pool per endpoint, plain HTTP calls, nothing
stored).

The endpoints are bench/stream_server.py (a fixed time per reply, so that what differs is
the caller's own overhead), or with --transformers-serve two tiny policies served by
`transformers serve` on this machine's CPU (the model's time dominates both sides).

    python bench/endpoint_batch_bench.py [--prompts 400] [--concurrency 8] [--tokens 16 --interval-ms 5]
    python bench/endpoint_batch_bench.py --transformers-serve --prompts 60 --concurrency 2 --max-tokens 16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.live_bench import ROOT, SECRET, free_port, setup_database, wait_for  # noqa: E402


def direct(base_url: str, models: list[str], prompts: int, concurrency: int, max_tokens: int) -> float:
    """Replies per second calling the endpoints directly: `concurrency` requests at once per endpoint."""
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency * len(models) + 4))

    def ask(model: str, i: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"question number {i}"}], "max_tokens": max_tokens}
        client.post(f"{base_url}/chat/completions", json=body).raise_for_status()

    pools = [ThreadPoolExecutor(max_workers=concurrency) for _ in models]
    started = time.perf_counter()
    futures = [pool.submit(ask, model, i) for i in range(prompts) for model, pool in zip(models, pools)]
    for future in futures:
        future.result()
    seconds = time.perf_counter() - started
    for pool in pools:
        pool.shutdown()
    return prompts * len(models) / seconds


def through_the_app(base_url: str, models: list[str], prompts: int, concurrency: int, max_tokens: int) -> tuple[float, dict]:
    import django

    django.setup()
    from inference.models import ModelEndpoint
    from labeling.models import Project, Prompt
    from training import runner, services

    project = Project.objects.create(name=f"batch bench {time.time_ns()}", overlap_k=1, gold_rate=0.0)
    Prompt.objects.bulk_create(
        Prompt(project=project, messages=[{"role": "user", "content": f"question number {i}"}], content_hash=f"q{i}") for i in range(prompts)
    )
    ids = [ModelEndpoint.objects.create(name=f"{project.pk}-{i}", base_url=base_url, model=model, concurrency=concurrency,
                                        max_tokens=max_tokens, timeout_seconds=120).pk for i, model in enumerate(models)]
    run = services.start_run(project=project, kind="endpoints", config={"endpoints": ids, "prompts": prompts}, enqueue=False)
    started = time.perf_counter()
    runner.execute(run.pk)
    seconds = time.perf_counter() - started
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    return run.metrics["prompts_answered"] * len(models) / seconds, run.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once per endpoint, both sides")
    parser.add_argument("--tokens", type=int, default=16, help="stream server: pieces per reply")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="stream server: time per piece")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--transformers-serve", action="store_true", help="two tiny policies served by transformers serve instead")
    parser.add_argument("--repeat", type=int, default=2, help="alternate direct / app this many times")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_batch")
    args = parser.parse_args()

    os.environ.update(DATABASE_URL=setup_database(args.pg, args.database), SECRET_KEY=SECRET, DJANGO_SETTINGS_MODULE="feedback_site.settings",
                      LOG_LEVEL="WARNING")
    procs = []
    try:
        if args.transformers_serve:
            base_url, models = serve_tiny_policies(procs)
            what = f"two tiny policies on transformers serve (CPU), {args.max_tokens} new tokens"
        else:
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "bench/stream_server.py", "--port", str(port), "--tokens", str(args.tokens),
                                           "--interval-ms", str(args.interval_ms)], cwd=ROOT, stdout=subprocess.DEVNULL))
            base_url, models = f"http://127.0.0.1:{port}/v1", ["a", "b"]
            wait_for(f"http://127.0.0.1:{port}/health", procs[0])
            what = f"stream server, {args.tokens} x {args.interval_ms:g} ms per reply"
        print(f"\nbatch generation: {args.prompts} prompts x {len(models)} endpoints, {args.concurrency} at once per endpoint; {what}")
        for _ in range(args.repeat):
            plain = direct(base_url, models, args.prompts, args.concurrency, args.max_tokens)
            app, metrics = through_the_app(base_url, models, args.prompts, args.concurrency, args.max_tokens)
            print(f"direct {plain:8.1f} replies/s | run {app:8.1f} replies/s ({app / plain:.1%} of direct) | "
                  f"tasks {metrics['tasks_created']}, failed prompts {metrics['prompts_failed']}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def serve_tiny_policies(procs: list) -> tuple[str, list[str]]:
    from training.management.commands.serve_policies import serve_command, serve_environment
    from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
    from training.ml.synthetic import corpus

    root = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    tokenizer = train_bpe_tokenizer(corpus(), 600)
    models = []
    for seed in (1, 2):
        path = root / f"policy-{seed}"
        save_new_model(new_policy(tokenizer, DefaultModelConfig(vocab_size=600, n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed)),
                       tokenizer, path)
        models.append(str(path))
    port = free_port()
    procs.append(subprocess.Popen(serve_command(host="127.0.0.1", port=port, device="cpu", model_timeout=3600),
                                  env=serve_environment(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(f"http://127.0.0.1:{port}/health", procs[-1], seconds=120)
    return f"http://127.0.0.1:{port}/v1", models


if __name__ == "__main__":
    main()
