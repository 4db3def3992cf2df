"""Annotator polish (#9) in a real browser (Debian's chromium through playwright), keyboard
first: input kept across a validation error and a reload, the progress counter, syntax
highlighting and line wrapping at 1000 px, the chosen reply's card, per-reply flags, the
key legend per task type, revising a recent judgement, the admin's 403, favicon, home.

Set SCREENSHOT_DIR to keep screenshots of the pages."""

import os

import pytest

from labeling.exporting import iter_export_rows
from labeling.models import Judgement, JudgementRevision, Project
from labeling.services import create_annotator

from .conftest import import_items, make_items
from .test_browser import browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser]

PASSWORD = "browser-pass-4k9q"
LONG_LINE = "result = compute_the_answer(" + ", ".join(f"argument_{i}" for i in range(30)) + ")  # DECISIVE_TAIL"
CODE_REPLY = (
    "Here is the fix:\n\n```python\nimport os\n\ndef answer(x):\n    return x * 2\n\n" + LONG_LINE + "\n```\n\n"
    "And a trap that must stay text:\n\n```\n<img src=x onerror=\"window.__xss = 1\"><script>window.__xss = 2</script>\n```"
)


def shot(page, name):
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], name), full_page=True)


def signed_in_page(browser, live_server, username, width=1000):  # noqa: F811
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.press("#id_password", "Enter")
    return page, errors


def checked(page, selector):
    return page.is_checked(selector)


def test_validation_error_keeps_every_input_and_a_reload_is_safe(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="ranking project", overlap_k=1, gold_rate=0, guidelines="Rank by **helpfulness**.")
    import_items(project, [{"prompt": "Explain recursion", "responses": ["reply one " + CODE_REPLY, "reply two", "reply three"]}])
    create_annotator(username="kim", password=PASSWORD)
    page, errors = signed_in_page(browser, live_server, "kim")
    label_url = f"{live_server.url}/projects/{project.pk}/label/"
    page.goto(label_url)
    page.wait_for_selector("#judgement-form")

    # the legend in the guidelines dialog is the ranking one, and says how strength works
    page.keyboard.press("g")
    legend = page.locator("#guidelines-dialog .key-legend").inner_text()
    assert "ranking tasks" in legend and "Shift" in legend and "same rank" in legend and "pairwise" not in legend
    # it opens at its top (the title has the focus), not scrolled down to its Close button (#20)
    assert page.evaluate("document.activeElement.id") == "guidelines-title"
    assert page.evaluate("document.getElementById('guidelines-dialog').scrollTop") == 0
    shot(page, "ranking-legend.png")
    page.keyboard.press("Escape")

    # every reply rank 1 plus a strength: invalid ("nothing is better")
    for keys in (["a", "1"], ["b", "1"], ["c", "1"]):
        for key in keys:
            page.keyboard.press(key)
    page.keyboard.press("Shift+Digit3")
    page.keyboard.press("u")
    assert "press the reply's letter" in page.locator("#key-hint").inner_text()
    page.keyboard.press("b")
    page.keyboard.press("w")
    page.keyboard.press("c")
    page.keyboard.press("r")
    page.keyboard.type("C states a wrong date")
    page.keyboard.press("Escape")
    assert checked(page, "#strength-3") and checked(page, "#flag-B-unsafe") and checked(page, "#flag-C-factually_wrong")
    assert page.locator(".reply.chosen").count() == 0  # rank 1 everywhere: none is better
    with page.expect_navigation():
        page.keyboard.press("Enter")

    def assert_kept():
        assert page.url == label_url  # a GET-able URL: reloading it never re-posts and never 405s
        assert "strength" in page.locator("#form-error").inner_text()
        assert checked(page, "#choice-ranking") and checked(page, "#strength-3")
        assert [page.input_value(f"#rank-{letter}") for letter in "ABC"] == ["1", "1", "1"]
        assert checked(page, "#flag-B-unsafe") and checked(page, "#flag-C-factually_wrong")
        assert not checked(page, "#flag-A-unsafe") and not checked(page, "#flag-B-other")
        assert page.input_value("#rationale") == "C states a wrong date"

    assert_kept()
    response = page.reload()
    assert response.status == 200 and response.request.method == "GET"
    assert_kept()
    shot(page, "ranking-error.png")

    # fixed by keyboard alone: B and C second, the strength stays
    for key in ("b", "2", "c", "2"):
        page.keyboard.press(key)
    assert page.locator(".reply.chosen").count() == 1 and "chosen" in page.get_attribute("#reply-A", "class")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Judgement saved" in page.content()
    judgement = Judgement.objects.get()
    order = judgement.display_order
    assert judgement.ranking == [[order[0]], sorted([order[1], order[2]])] and judgement.strength == 3
    assert judgement.reply_flags == {str(order[1]): ["unsafe"], str(order[2]): ["factually_wrong"]}
    assert judgement.rationale == "C states a wrong date" and judgement.time_spent_ms > 0
    assert not errors, errors


def test_pairwise_page_counter_highlighting_wrapping_and_chosen_card(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="code project", overlap_k=1, gold_rate=0, guidelines="Prefer working code.")
    import_items(project, [{"prompt": "Fix my script", "responses": [CODE_REPLY, "Try `pip install` again. " * 8]}] + make_items(2))
    create_annotator(username="kim", password=PASSWORD)
    page, errors = signed_in_page(browser, live_server, "kim", width=1000)
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    page.wait_for_selector("#judgement-form")

    counter = page.locator("#progress-counter").inner_text()
    assert "0 done today" in counter and "3 left for you" in counter

    # syntax highlighting from the bundled highlight.js; the HTML in a code block stays text
    code_reply = "#reply-A" if "def answer" in page.locator("#reply-A").inner_text() else "#reply-B"
    page.wait_for_selector(f"{code_reply} code.hljs .hljs-keyword", timeout=15000)
    assert page.locator(".reply-body img, .reply-body script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert "<img src=x onerror=" in page.locator(code_reply).inner_text()

    # long lines wrap at 1000 px: the decisive end of the line is on screen, no horizontal scroll
    pre = page.locator(f"{code_reply} pre").first
    def overflows():
        return pre.evaluate("el => el.scrollWidth > el.clientWidth + 1")
    assert not overflows() and page.locator(f"{code_reply} >> text=DECISIVE_TAIL").is_visible()
    assert page.get_attribute("#wrap-toggle", "aria-pressed") == "true"
    page.keyboard.press("l")
    assert overflows() and page.get_attribute("#wrap-toggle", "aria-pressed") == "false"
    page.reload()
    page.wait_for_selector("#judgement-form")
    assert overflows()  # the choice is remembered
    page.keyboard.press("l")
    assert not overflows()
    shot(page, "pairwise-code.png")

    # the chosen reply's card is highlighted in pairwise mode too
    page.keyboard.press("a")
    assert "chosen" in page.get_attribute("#reply-A", "class") and "chosen" not in page.get_attribute("#reply-B", "class")
    page.keyboard.press("b")
    assert "chosen" in page.get_attribute("#reply-B", "class") and "chosen" not in page.get_attribute("#reply-A", "class")
    page.keyboard.press("t")
    assert page.locator(".reply.chosen").count() == 0
    page.check("#choice-A")  # with the mouse too
    assert "chosen" in page.get_attribute("#reply-A", "class")
    shot(page, "pairwise-chosen.png")

    # the legend is the pairwise one; flag reply B by keys, then judge
    page.keyboard.press("g")
    legend = page.locator("#guidelines-dialog .key-legend").inner_text()
    assert "pairwise tasks" in legend and "Shift" not in legend
    page.keyboard.press("Escape")
    for key in ("2", "o", "b"):
        page.keyboard.press(key)
    assert checked(page, "#flag-B-other") and not checked(page, "#flag-A-other")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    counter = page.locator("#progress-counter").inner_text()
    assert "1 done today" in counter and "2 left for you" in counter
    judgement = Judgement.objects.get()
    assert (judgement.choice, judgement.strength, judgement.flags) == ("A", 2, ["other"])
    assert judgement.reply_flags == {str(judgement.display_order[1]): ["other"]}
    assert not errors, errors


def test_revise_a_recent_judgement_by_keyboard(live_server, transactional_db, browser):  # noqa: F811
    project = Project.objects.create(name="review project", overlap_k=1, gold_rate=0)
    import_items(project, make_items(2))
    create_annotator(username="kim", password=PASSWORD)
    page, errors = signed_in_page(browser, live_server, "kim")
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    page.wait_for_selector("#judgement-form")
    for key in ("a", "1"):
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    judgement = Judgement.objects.get()

    page.click("text=My judgements")
    page.wait_for_selector(f'tr[data-judgement="{judgement.pk}"]')
    assert "A is better (slightly)" in page.locator(f'tr[data-judgement="{judgement.pk}"]').inner_text()
    with page.expect_navigation():
        page.click(f'tr[data-judgement="{judgement.pk}"] >> text=Revise')
    assert checked(page, "#choice-A") and checked(page, "#strength-1")
    assert "chosen" in page.get_attribute("#reply-A", "class")
    for key in ("b", "4", "u", "a"):
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Judgement revised" in page.content()
    row = page.locator(f'tr[data-judgement="{judgement.pk}"]').inner_text()
    assert "B is better (much better)" in row and "revised 1×" in row and "A: unsafe" in row
    shot(page, "my-judgements.png")

    judgement.refresh_from_db()
    assert (judgement.choice, judgement.strength, judgement.revision) == ("B", 4, 1)
    assert JudgementRevision.objects.get().choice == "A"
    rows = list(iter_export_rows(project=project, fmt="raw"))
    assert len(rows) == 1 and rows[0]["choice"] == "B"
    assert not errors, errors


def test_annotator_gets_403_page_for_admin_favicon_and_home(live_server, transactional_db, browser):  # noqa: F811
    Project.objects.create(name="Helpfulness", description="Which reply helps the user more?", overlap_k=1, gold_rate=0)
    second = Project.objects.create(name="Harmlessness", guidelines="Prefer the **safer** reply.\n\nMore detail.", overlap_k=1, gold_rate=0)
    import_items(second, make_items(3))
    create_annotator(username="kim", password=PASSWORD)
    page, errors = signed_in_page(browser, live_server, "kim")
    page.wait_for_selector("table.progress")
    text = page.locator("table.progress").inner_text()
    assert "Which reply helps the user more?" in text and "Prefer the safer reply." in text and "More detail" not in text
    icon = page.get_attribute('link[rel="icon"]', "href")
    status = page.evaluate("href => fetch(href).then(r => [r.status, r.headers.get('content-type')])", icon)
    assert status[0] == 200 and "svg" in status[1]
    shot(page, "home.png")

    for path in ("/admin/", "/training/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 403, path
        assert page.locator("h1").inner_text() == "Not allowed"
        assert page.locator(".topbar .brand").is_visible() and page.locator("#login-form").count() == 0
    shot(page, "admin-403.png")
    assert not errors, errors
