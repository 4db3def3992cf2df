"""Running a training stage as `torchrun --nproc_per_node=N` under the worker (TRAINING_PROCESSES).

The worker writes the stage's inputs (judgements, demonstrations or prompts as JSON Lines)
into ARTIFACT_ROOT/work/run-<id>/, starts the engine's command line (training/ml/cli.py)
under torchrun, and while it runs:

- relays progress: rank 0 appends one JSON line per step to progress.jsonl; each new line
  goes to the run's RunReporter (progress bar, metric series, heartbeat);
- relays cancel: when the run's cancel flag is set the worker creates the `stop` file;
  rank 0 sees it at its next step, all ranks agree through an all-reduce and stop together
  (exit code 3);
- keeps the heartbeat going (the reporter's thread), and if the worker itself dies the
  kernel sends torchrun SIGTERM (PR_SET_PDEATHSIG), which stops its ranks.

A rank that fails makes torchrun exit non-zero; its traceback (torchrun prints the root
cause, cli.main is wrapped in `record`) ends the run's error text. The model folder is
written by rank 0 straight to its final place, atomically, as in one process.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from django.conf import settings

from .exceptions import TrainingFailed
from .ml.data import Judgement
from .ml.hooks import TrainingCancelled

CANCELLED_EXIT_CODE = 3  # cli.py's exit code when every rank stopped on request
INPUT_FLAGS = {
    "reward": {"data": "--data"}, "sft": {"data": "--data"}, "dpo": {"data": "--data"},
    "ppo": {"prompts": "--prompts"}, "rloo": {"prompts": "--prompts"}, "grpo": {"prompts": "--prompts"},
}
LOG_TAIL_CHARS = 6000


def raw_export_lines(judgements: list[Judgement]) -> list[str]:
    """The engine's judgements as the `raw` export lines that cli.py reads back."""
    return [
        json.dumps({
            "prompt_id": j.prompt_id, "prompt": j.messages, "responses": [{"id": rid, "text": text} for rid, text in j.replies.items()],
            "ranking": j.ranking, "choice": j.choice, "strength": j.strength,
        }, ensure_ascii=False)
        for j in judgements
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _relay(progress_file: Path, offset: int, reporter) -> int:
    """Hand every complete new progress line to the reporter; return the new file offset."""
    if not progress_file.exists():
        return offset
    with progress_file.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.splitlines():
        if line.strip():
            reporter.on_progress(json.loads(line))
    return offset + len(complete)


def run_engine(run, reporter, kind: str, processes: int, device, *, inputs: dict[str, list[str]], args: list[str], config) -> dict:
    """Run `python -m training.ml.cli KIND` under torchrun with `processes` ranks; return its final metrics."""
    work = Path(settings.ARTIFACT_ROOT) / "work" / f"run-{run.pk}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "training.ml.cli", "--device", "cuda" if device.type == "cuda" else "cpu", kind,
        ]
        for name, lines in inputs.items():
            path = work / f"{name}.jsonl"
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            command += [INPUT_FLAGS[kind][name], str(path)]
        progress, stop, metrics, log_file = work / "progress.jsonl", work / "stop", work / "metrics.json", work / "engine.log"
        command += args + [
            "--config", json.dumps(asdict(config)), "--metrics-out", str(metrics), "--progress-file", str(progress), "--stop-file", str(stop),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.BASE_DIR), os.environ.get("PYTHONPATH")]))}
        if device.type == "cpu":  # share the cores between the ranks instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        reporter.log(f"{kind}: torchrun with {processes} processes")
        with log_file.open("wb") as log:
            child = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            offset = 0
            try:
                while child.poll() is None:
                    offset = _relay(progress, offset, reporter)
                    if not stop.exists() and reporter.should_stop():
                        stop.touch()
                    time.sleep(0.5)
            finally:
                if child.poll() is None:  # the worker is leaving (an exception here): take the ranks down
                    child.terminate()
                    child.wait(timeout=30)
            _relay(progress, offset, reporter)
        if child.returncode == 0 and metrics.exists():
            return json.loads(metrics.read_text())
        if stop.exists():
            raise TrainingCancelled("stopped on request")
        tail = log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise TrainingFailed(f"{kind} under torchrun ({processes} processes) exited with code {child.returncode}:\n{tail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
