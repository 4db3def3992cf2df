"""A real browser (Debian's chromium through playwright): keyboard-only judging."""

import os
import re

import pytest

from labeling.models import Assignment, Judgement, Project
from labeling.services import create_annotator

from .conftest import CHROMIUM, import_items, make_items

pytestmark = [pytest.mark.browser]


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # playwright's sync API keeps an event loop in this thread; the ORM calls made here
    # are still plain synchronous calls, so Django's async guard does not apply.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def cell(page, name):
    return int(page.locator(f"td.{name}").first.inner_text())


def test_annotator_judges_three_tasks_by_keyboard_and_skips_one(live_server, transactional_db, browser):
    project = Project.objects.create(name="browser project", overlap_k=1, gold_rate=0, guidelines="Prefer **correct** replies.")
    import_items(project, make_items(5))
    create_annotator(username="kim", password="garden-gate-secret")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{live_server.url}/")
    page.wait_for_selector("#id_username:focus")  # autofocus: no click needed
    page.keyboard.type("kim")
    page.keyboard.press("Tab")
    page.keyboard.type("garden-gate-secret")
    page.keyboard.press("Enter")
    page.wait_for_selector("table.progress")
    assert (cell(page, "judged-today"), cell(page, "tasks-left")) == (0, 5)

    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    served = []
    for keys in (["a", "3"], ["b", "1"], ["t"]):
        page.wait_for_selector("#judgement-form")
        served.append(page.locator("#judgement-form").get_attribute("action"))
        for key in keys:
            page.keyboard.press(key)
        page.keyboard.press("g")  # guidelines one key away, Esc closes them
        assert page.locator("#guidelines-dialog").is_visible()
        assert "correct" in page.locator("#guidelines-dialog").inner_text()
        page.keyboard.press("Escape")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "Judgement saved" in page.content()
    served.append(page.locator("#judgement-form").get_attribute("action"))
    with page.expect_navigation():
        page.keyboard.press("s")
    assert "Task skipped" in page.content()
    assert len(set(served)) == 4  # a new task appeared after each action
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], "compare.png"), full_page=True)

    page.goto(f"{live_server.url}/")
    # 5 tasks - 3 judged - 1 skipped: the fifth, which the page leased to kim, is left
    assert (cell(page, "judged-today"), cell(page, "judged-total"), cell(page, "tasks-left")) == (3, 3, 1)
    choices = sorted(Judgement.objects.values_list("choice", "strength"))
    assert choices == [("A", 3), ("B", 1), ("tie", None)]
    assert all(t > 0 for t in Judgement.objects.values_list("time_spent_ms", flat=True))
    assert Assignment.objects.filter(state="skipped").count() == 1
    assert not errors, errors
    assert re.search(r"Log out", page.content())
