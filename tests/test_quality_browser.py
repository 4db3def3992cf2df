"""The quality page (#10) in a real browser: agreement figures, the weekly chart, the
annotator table with a flagged annotator paused from the page, the leaderboard.

Set SCREENSHOT_DIR to keep a screenshot."""

import os

import numpy as np
import pytest

from labeling.models import AnnotatorPause, ComparisonTask, Project, ProjectQualitySettings
from labeling.services import create_annotator

from .conftest import import_items, make_items
from .test_browser import browser  # noqa: F401 - the chromium fixture
from .test_quality_data import judge

pytestmark = [pytest.mark.browser]
PASSWORD = "quality-browser-6w2p"


def test_the_quality_page(browser, live_server, transactional_db):  # noqa: F811
    project = Project.objects.create(name="Quality in the browser", overlap_k=3, gold_rate=0)
    import_items(project, make_items(40))
    ProjectQualitySettings.objects.create(project=project, min_judgements=10, min_time_ms=0)
    people = [create_annotator(username=f"rater{i}", password=PASSWORD) for i in range(3)]
    rng = np.random.default_rng(2)
    for task in ComparisonTask.objects.filter(project=project):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        truth = int(rng.integers(0, 2))
        for person in people:
            order = [int(i) for i in rng.permutation(ids)]
            winner = ids.index(order[0]) if person == people[0] else (truth if rng.random() < 0.8 else 1 - truth)
            judge(task, person, order, winner=winner)
    create_annotator(username="lead", password=PASSWORD, is_admin=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "lead")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.press("#id_password", "Enter")
    page.goto(f"{live_server.url}/manage/projects/{project.pk}/")
    page.click(".subnav >> text=Quality")
    page.wait_for_selector("#alpha-nominal .value")
    alpha = float(page.inner_text("#alpha-nominal .value"))
    assert 0 < alpha < 1
    assert "95% CI" in page.inner_text("#alpha-nominal .ci")
    assert page.query_selector("#alpha-weekly svg .point") is not None
    row = page.locator(f"#annotator-quality tr[data-annotator='{people[0].pk}']")
    assert "first-shown reply" in row.inner_text()
    assert page.locator("#annotator-quality tr.flagged-row").count() == 1
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], "quality.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.pause").click()
    page.wait_for_selector(".messages li.success")
    assert "is paused" in page.inner_text(".messages")
    assert AnnotatorPause.objects.filter(project=project, annotator=people[0], lifted_at__isnull=True).exists()
    assert "paused" in page.locator(f"#annotator-quality tr[data-annotator='{people[0].pk}']").inner_text()
    assert errors == []
