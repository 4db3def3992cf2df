"""People pages (#9) in a real browser (Debian's chromium through playwright): an admin adds
an annotator through the form (a weak password first), assigns them to a closed project,
and the annotator, signed in elsewhere, sees exactly that project and can label it.

Set SCREENSHOT_DIR to keep screenshots of the pages."""

import os

import pytest
from django.contrib.auth import get_user_model

from labeling.models import Assignment, Project
from labeling.services import create_annotator

from .conftest import import_items, make_items
from .test_browser import browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser]

ADMIN_PASSWORD = "admin-browser-pass-5t"
NEW_PASSWORD = "first-day-browser-9w"


def shot(page, name):
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], name), full_page=True)


def sign_in(context, live_server, username, password):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.press("#id_password", "Enter")
    return page, errors


def test_admin_adds_an_annotator_and_assigns_a_closed_project(live_server, transactional_db, browser):  # noqa: F811
    secret = Project.objects.create(name="Secret project", overlap_k=1, gold_rate=0, open_to_all=False)
    import_items(secret, make_items(2, prefix="secret"))
    other = Project.objects.create(name="Other closed project", overlap_k=1, gold_rate=0, open_to_all=False)
    import_items(other, make_items(2, prefix="other"))
    create_annotator(username="boss", password=ADMIN_PASSWORD, is_admin=True)

    admin_context = browser.new_context(viewport={"width": 1200, "height": 900})
    page, admin_errors = sign_in(admin_context, live_server, "boss", ADMIN_PASSWORD)
    with page.expect_navigation():
        page.click("header nav >> text=People")
    assert page.locator("h1").inner_text() == "People"
    with page.expect_navigation():
        page.click("#add-person")

    # a weak password first: the validator's reason next to the field, the username kept
    page.fill("#id_username", "nora")
    page.fill("#id_email", "nora@example.org")
    page.fill("#id_password", "password1")
    with page.expect_navigation():
        page.click("#create-person")
    assert "Password:" in page.locator("#field-password .field-error").inner_text()
    assert page.input_value("#id_username") == "nora" and page.input_value("#id_password") == ""
    assert not get_user_model().objects.filter(username="nora").exists()
    shot(page, "people-new-error.png")

    page.fill("#id_password", NEW_PASSWORD)
    with page.expect_navigation():
        page.click("#create-person")
    assert "Added annotator “nora”" in page.locator(".messages").inner_text()
    assert page.locator("#person-name").inner_text().startswith("nora")

    page.check(f"#projects-form input[value='{secret.pk}']")
    with page.expect_navigation():
        page.click("#save-projects")
    assert "“nora” is assigned to “Secret project”." in page.locator(".messages").inner_text()
    assert page.is_checked(f"#projects-form input[value='{secret.pk}']")
    assert not page.is_checked(f"#projects-form input[value='{other.pk}']")
    shot(page, "people-detail.png")

    page.goto(f"{live_server.url}/manage/people/")
    row = page.locator("tr[data-username='nora']")
    assert row.locator("td.assigned").inner_text() == "Secret project"
    shot(page, "people-list.png")
    assert not admin_errors, admin_errors

    # the annotator, in a separate browser context (no shared cookies)
    annotator_context = browser.new_context(viewport={"width": 1200, "height": 900})
    page, errors = sign_in(annotator_context, live_server, "nora", NEW_PASSWORD)
    page.wait_for_selector("table.progress")
    assert page.locator("strong.project-name").all_inner_texts() == ["Secret project"]
    shot(page, "people-annotator-home.png")
    with page.expect_navigation():
        page.click(f"tr[data-project='{secret.pk}'] >> text=Start labeling")
    page.wait_for_selector("#judgement-form")
    assert page.url == f"{live_server.url}/projects/{secret.pk}/label/"
    assert Assignment.objects.filter(annotator__username="nora", task__project=secret, state="leased").count() == 1
    # the other closed project stays shut
    response = page.goto(f"{live_server.url}/projects/{other.pk}/label/")
    assert response.status == 403 and "not open to you" in page.content()
    assert not errors, errors
    annotator_context.close()
    admin_context.close()
