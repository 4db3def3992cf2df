"""The training dashboard (#9, part 6) in a real browser (Debian's chromium through
playwright): run times and ETA, a cycle's stage metrics on its row, the charts' layout
measured in the page (two y-axes, nice ticks, a legend outside the plot, nothing
overlapping) for hundreds of points and for one, the empty state, and rolling the policy
back to the built-in one behind a confirm dialog. Runs and versions are made with the
ORM; nothing is trained.

Set SCREENSHOT_DIR to keep screenshots of the page."""

import math
import os
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import Project
from labeling.services import create_annotator
from training import services
from training.models import ModelVersion, RunStatus, TrainingRun

from .test_browser import browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser]

PASSWORD = "dashboard-pass-7Hq2"
XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'


def shot(page, name):
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], name), full_page=True)


def signed_in_dashboard(browser, live_server, project, width=1300):  # noqa: F811
    create_annotator(username="boss", password=PASSWORD, is_admin=True)
    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/?next=/training/%3Fproject%3D{project.pk}")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.press("#id_password", "Enter")
    page.wait_for_selector("#dashboard")
    return page, errors


def ppo_series(n):
    """n steps of a plausible PPO run: reward climbs from about -0.5 to 1.3, KL from 0 to about 4."""
    return [{"step": i + 1, "reward_mean": -0.5 + 1.8 * i / max(1, n - 1) + 0.1 * math.sin(i), "kl": 4.0 * (i / max(1, n - 1)) ** 1.5 - 0.12,
             "kl_k3": 4.0 * (i / max(1, n - 1)) ** 1.5} for i in range(n)]  # k1 dips below 0 early on; the chart shows k3


def populate(project):
    now = timezone.now()
    TrainingRun.objects.create(
        project=project, kind="reward", status=RunStatus.SUCCEEDED, progress=1.0, metrics={"val_accuracy": 0.82, "version": 2, "promoted": True},
        started_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=2) + timedelta(seconds=100),
    )
    cycle = TrainingRun.objects.create(
        project=project, kind="cycle", status=RunStatus.SUCCEEDED, progress=1.0,
        started_at=now - timedelta(hours=1), finished_at=now - timedelta(hours=1) + timedelta(seconds=3725),
    )
    for kind, metrics in [
        ("reward", {"val_accuracy": 0.82, "val_pairs": 40, "version": 2, "promoted": True}),
        ("ppo", {"reward_gain": 0.15, "kl": 0.42, "version": 1, "promoted": False}),
        ("generate", {"tasks_created": 7}),
    ]:
        TrainingRun.objects.create(project=project, kind=kind, parent=cycle, status=RunStatus.SUCCEEDED, progress=1.0, metrics=metrics)
    running = TrainingRun.objects.create(
        project=project, kind="ppo", status=RunStatus.RUNNING, progress=0.25, started_at=now - timedelta(seconds=60), metric_series=ppo_series(300),
    )
    failed = TrainingRun.objects.create(project=project, kind="sft", status=RunStatus.FAILED, error=XSS, started_at=now, finished_at=now)
    reward_versions = [(1, 0.61, "retired"), (2, 0.82, "active")]
    for number, accuracy, status in reward_versions:
        ModelVersion.objects.create(
            project=project, kind="reward", number=number, artifact_path="/nowhere", metrics={"val_accuracy": accuracy}, status=status, promoted_at=now,
        )
    ModelVersion.objects.create(project=project, kind="policy", number=1, artifact_path="/nowhere", status="active", promoted_at=now, promotion_note=XSS)
    return cycle, running, failed


# Boxes in page pixels (getBoundingClientRect: after the viewBox scaling and the rotation of the y titles).
MEASURE = """svg => {
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, text: e.textContent}; };
  const all = sel => Array.from(svg.querySelectorAll(sel)).map(box);
  return {
    plot: box(svg.querySelector('.plot-area')),
    legend: all('.legend-item'),
    lines: all('.series-line'),
    dots: svg.querySelectorAll('circle').length,
    left: all('.y-axis-left .tick-label'),
    right: all('.y-axis-right .tick-label'),
    x: all('.x-axis .tick-label'),
    titles: all('.axis-title'),
    svg: box(svg),
  };
}"""


def overlap(a, b, slack=0.5):
    return a["left"] < b["right"] - slack and b["left"] < a["right"] - slack and a["top"] < b["bottom"] - slack and b["top"] < a["bottom"] - slack


def inside(inner, outer, slack=1.0):
    return inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack


def assert_nice(labels):
    """Evenly spaced ticks at multiples of 1, 2 or 5 x 10^k."""
    values = [float(label["text"].rstrip("%")) for label in labels]
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    assert len(steps) <= 1, values
    if steps:
        step = steps.pop()
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 5), values
        assert all(abs(v / step - round(v / step)) < 1e-6 for v in values), values


def assert_clean_layout(geometry, *, two_axes):
    """Legend outside the plot and apart; tick labels and titles apart from each other, the legend and the plot."""
    plot = geometry["plot"]
    assert geometry["lines"] and all(inside(line, plot) for line in geometry["lines"]), geometry
    legend = geometry["legend"]
    assert len(legend) == len(geometry["lines"])
    for i, item in enumerate(legend):
        assert inside(item, geometry["svg"]), item
        assert not overlap(item, plot), (item, plot)  # so it never covers a line
        assert not any(overlap(item, line) for line in geometry["lines"])
        assert not any(overlap(item, other) for other in legend[i + 1:]), legend
    assert len(geometry["left"]) >= 2 and len(geometry["x"]) >= 1
    assert (len(geometry["right"]) >= 2) if two_axes else not geometry["right"]
    labels = geometry["left"] + geometry["right"] + geometry["x"] + geometry["titles"]
    assert len(geometry["titles"]) == (3 if two_axes else 2)
    for i, label in enumerate(labels):
        assert inside(label, geometry["svg"]), label
        assert not overlap(label, plot), (label, plot)
        assert not any(overlap(label, item) for item in legend), label
        assert not any(overlap(label, other) for other in labels[i + 1:]), (label, labels)
    for axis in ("left", "right", "x"):
        assert_nice(geometry[axis])


def test_runs_show_times_and_eta_a_cycle_shows_its_stages_and_the_charts_are_laid_out(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="dashboard project")
    cycle, running, failed = populate(project)
    page, errors = signed_in_dashboard(browser, live_server, project)
    page.wait_for_selector(f"#runs tr[data-run='{running.pk}'] .run-eta")
    page.wait_for_selector("#chart-ppo .series-line")

    # start, finish and duration of every run, in local time; an ETA for the running one
    for run in TrainingRun.objects.filter(project=project, started_at__isnull=False):
        row = page.locator(f"#runs tr[data-run='{run.pk}']")
        started = row.locator("td.run-started time")
        shown_ms = page.evaluate("s => Date.parse(s)", started.get_attribute("datetime"))
        assert abs(shown_ms - run.started_at.timestamp() * 1000) < 1.5
        expected_local = page.evaluate("iso => new Date(iso).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'})", run.started_at.isoformat())
        assert expected_local in started.inner_text()
    cycle_row = page.locator(f"#runs tr[data-run='{cycle.pk}']")
    assert cycle_row.locator("td.run-duration").inner_text() == "1 h 02 min"
    assert re.search(r"\d\d:\d\d:\d\d", cycle_row.locator("td.run-finished").inner_text())
    running_row = page.locator(f"#runs tr[data-run='{running.pk}']")
    assert re.fullmatch(r" · about \d+ min left", running_row.locator(".run-eta").text_content())  # 25% in a minute: about 3
    assert running_row.locator("td.run-finished.expected").inner_text().startswith("≈ ")
    assert running_row.locator("td.run-duration").inner_text().endswith(" so far")

    # the cycle's row says what its stages did; the stages follow it
    stages = cycle_row.locator("td.run-metrics li")
    assert stages.count() == 3
    assert stages.nth(0).inner_text() == "reward model: val accuracy 82.0%, v2 promoted"
    assert stages.nth(1).inner_text() == "PPO: reward gain +0.150, KL 0.420, v1 not promoted"
    assert stages.nth(2).inner_text() == "generate: 7 tasks created"
    order = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
    first_stage = TrainingRun.objects.filter(parent=cycle).order_by("pk").first()
    assert order.index(str(first_stage.pk)) == order.index(str(cycle.pk)) + 1

    # PPO chart: 300 steps, reward on the left axis and KL on the right one
    ppo = page.eval_on_selector("#chart-ppo", MEASURE)
    assert_clean_layout(ppo, two_axes=True)
    assert ppo["dots"] == 0  # too many points for dots
    assert [item["text"] for item in ppo["legend"]] == ["mean reward (left axis)", "KL (k3, ≥ 0) (right axis)"]
    assert float(ppo["right"][0]["text"]) >= 0  # no negative KL ticks: k1 went to -0.12, k3 cannot
    assert {title["text"] for title in ppo["titles"]} == {"step", "mean reward", "KL to reference (k3)"}
    assert float(ppo["right"][-1]["text"]) >= 4.0 > float(ppo["right"][-2]["text"])  # KL on its own scale
    assert float(ppo["left"][-1]["text"]) < 4.0
    rm = page.eval_on_selector("#chart-rm", MEASURE)
    assert_clean_layout(rm, two_axes=False)
    assert rm["dots"] == 2 and [label["text"] for label in rm["left"]] == ["0%", "20%", "40%", "60%", "80%", "100%"]
    assert [label["text"] for label in rm["x"]] == ["1", "2"]

    # data goes in as text
    assert page.locator("#versions td", has_text="<img src=x").count() == 1
    page.locator(f"#runs tr[data-run='{failed.pk}'] button", has_text="Error").click()
    assert page.locator("#run-error").inner_text() == XSS
    assert page.evaluate("window.__xss") is None
    shot(page, "dashboard-charts.png")
    assert not errors, errors


def test_one_point_and_no_data(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="one step")
    samples = [{"prompt": "How do I <b>boil</b> an egg?", "turns": 3, "reference": "<img src=x onerror=window.__xss=1>", "candidate": "Boil it for 8 minutes.",
                "reward_reference": -0.4, "reward_candidate": 1.25}]
    TrainingRun.objects.create(project=project, kind="ppo", status=RunStatus.SUCCEEDED, progress=1.0,
                               metric_series=[{"step": 1, "reward_mean": 0.3, "kl": 0.0, "kl_k3": 0.0}],
                               metrics={"eval_samples": samples, "eval_prompts": 32, "eval_wins": 20, "eval_losses": 9, "version": 2, "promoted": True})
    empty = Project.objects.create(name="nothing yet")
    page, errors = signed_in_dashboard(browser, live_server, project, width=900)
    # the held-out prompts side by side: before and after, as text
    page.wait_for_selector("#policy-samples:not([hidden]) tbody tr")
    cells = page.eval_on_selector_all("#policy-samples tbody td", "cells => cells.map(c => c.innerText)")
    assert cells[0] == "How do I <b>boil</b> an egg? (last of 3 turns)"
    assert cells[1].splitlines() == ["<img src=x onerror=window.__xss=1>", "reward -0.40"] and cells[2].splitlines()[-1] == "reward 1.25"
    assert "policy v2, promoted" in page.inner_text("#policy-samples-caption") and page.evaluate("window.__xss") is None
    page.wait_for_selector("#chart-ppo .series-line", state="attached")  # one point: a line of no size
    one = page.eval_on_selector("#chart-ppo", MEASURE)
    assert_clean_layout(one, two_axes=True)
    assert one["dots"] == 2 and [label["text"] for label in one["x"]] == ["1"]
    assert page.locator("#chart-rm-empty").is_visible() and not page.locator("#chart-rm").is_visible()
    shot(page, "dashboard-one-point.png")

    page.goto(f"{live_server.url}/training/?project={empty.pk}")
    page.wait_for_selector("#chart-ppo-empty:visible")
    assert page.locator("#policy-samples").is_hidden()
    assert page.locator("#chart-ppo-empty").inner_text() == "No PPO run with metrics yet."
    assert not page.locator("#chart-ppo").is_visible()
    assert page.locator("#runs td.empty").inner_text().startswith("No runs yet")
    assert page.locator("#project-link").get_attribute("href") == f"/manage/projects/{empty.pk}/"
    shot(page, "dashboard-empty.png")
    assert not errors, errors


def test_use_the_built_in_policy_after_confirming(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="rollback project")
    now = timezone.now()
    ModelVersion.objects.create(project=project, kind="policy", number=1, artifact_path="/nowhere", status="retired", promoted_at=now)
    ModelVersion.objects.create(project=project, kind="policy", number=2, artifact_path="/nowhere", status="active", promoted_at=now)
    page, errors = signed_in_dashboard(browser, live_server, project)
    page.wait_for_selector("#active-policy >> text=policy v2")
    questions = []

    def answer(accept):
        def handle(dialog):
            questions.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return handle

    page.once("dialog", answer(False))
    page.click("#use-builtin-policy")
    page.wait_for_timeout(500)
    assert services.active_version(project, "policy").number == 2  # dismissed: nothing happened
    page.once("dialog", answer(True))
    page.click("#rollback-policy")
    page.wait_for_selector("#active-policy >> text=policy v1")
    assert "from v2 to v1" in questions[-1]
    page.once("dialog", answer(True))
    page.click("#use-builtin-policy")
    page.wait_for_selector("#active-policy >> text=built-in default policy")
    assert "built-in default policy" in questions[-1] and len(questions) == 3
    assert services.active_version(project, "policy") is None
    assert "built-in default policy" in page.locator("#dashboard-status").inner_text()
    assert page.locator("#use-builtin-policy").is_disabled() and page.locator("#rollback-policy").is_disabled()
    shot(page, "dashboard-builtin.png")
    assert not errors, errors


def test_a_version_the_gate_refused_is_promoted_only_through_an_override_that_shows_the_reason(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="override project")
    ModelVersion.objects.create(project=project, kind="policy", number=1, artifact_path="/nowhere", status="active", promoted_at=timezone.now())
    refused = ModelVersion.objects.create(
        project=project, kind="policy", number=2, artifact_path="/nowhere", gate_refused=True,
        promotion_note="on 32 held-out prompts the reward model preferred it 14 times and its reference 18 times",
    )
    page, errors = signed_in_dashboard(browser, live_server, project)
    row = page.locator(f"#versions tr[data-version='{refused.pk}']")
    row.locator("button", has_text="Promote anyway…").wait_for()
    assert row.locator("button", has_text="Promote").count() == 1  # no plain Promote beside it
    shot(page, "dashboard-override.png")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    row.locator("button", has_text="Promote anyway…").click()
    page.wait_for_selector(f"#versions tr.version-active[data-version='{refused.pk}']")
    assert "The promotion gate refused policy v2: on 32 held-out prompts" in asked[0] and "recorded with your name" in asked[0]
    refused.refresh_from_db()
    assert refused.status == "active" and refused.promotion_note.startswith("promoted by boss, overriding the gate, which said: on 32")
    assert not errors, errors
