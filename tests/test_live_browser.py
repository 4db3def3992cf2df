"""The live chat-and-compare page in a real browser (Debian's chromium through playwright):
a conversation with two policies served by `transformers serve`, replies streaming into their
panes, keyboard judging, the conversation going on from the chosen reply; a failed reply with
a retry; model output that tries to run script."""

import os

import pytest

from inference.models import ModelEndpoint
from labeling import live
from labeling.models import Judgement, LiveTurn, Project
from labeling.services import create_annotator

from .test_browser import browser  # noqa: F401 - the fixture

pytestmark = [pytest.mark.browser]


def live_project(*endpoints) -> Project:
    project = Project.objects.create(name="live in the browser", overlap_k=3, gold_rate=0.0, guidelines="Prefer the **helpful** reply.")
    rules = live.live_settings_for(project)
    rules.enabled = True
    rules.max_turns = 3
    rules.save()
    rules.endpoints.set(endpoints)
    return project


def sign_in(browser, live_server):  # noqa: F811
    create_annotator(username="lee", password="river-stone-secret")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "lee")
    page.fill("#id_password", "river-stone-secret")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    return page, errors


def send(page, text):
    page.fill("#live-message", text)
    page.keyboard.press("Control+Enter")


def test_a_conversation_with_two_served_policies(live_server, transactional_db, browser, policy_server):  # noqa: F811
    a = ModelEndpoint.objects.create(name="served one", base_url=policy_server.base_url, model=str(policy_server.policies[0]), max_tokens=12, temperature=1.0)
    b = ModelEndpoint.objects.create(name="served two", base_url=policy_server.base_url, model=str(policy_server.policies[1]), max_tokens=12, temperature=1.0)
    project = live_project(a, b)
    page, errors = sign_in(browser, live_server)
    assert page.locator(".live-link").count() == 1  # the home page links the live page
    page.goto(f"{live_server.url}/projects/{project.pk}/live/")
    send(page, "Tell me about tea")
    page.wait_for_selector("#judgement-form", timeout=60_000)  # streamed, then the server renders both with the form
    assert page.locator(".reply").count() == 2 and "Tell me about tea" in page.locator(".conversation").inner_text()
    assert "served one" not in page.content() and "served two" not in page.content()
    for key in ("b", "3"):
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_selector("#live-composer")
    turn = LiveTurn.objects.get()
    chosen = turn.task.responses.get(pk=turn.assignment.display_order[1]).text
    judgement = Judgement.objects.get()
    assert (judgement.choice, judgement.strength) == ("B", 3)
    if chosen:  # the reply goes on as the assistant's turn
        assert page.locator(".turn-assistant").count() == 1
    send(page, "And coffee?")
    page.wait_for_selector("#judgement-form", timeout=60_000)
    page.keyboard.press("t")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_selector("#live-composer")
    second = LiveTurn.objects.order_by("-pk").first()
    assert second.messages[-1] == {"role": "user", "content": "And coffee?"} and second.messages[1] == {"role": "assistant", "content": chosen}
    assert Judgement.objects.count() == 2
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], "live-composer.png"), full_page=True)
    assert not errors, errors


def test_replies_stream_in_a_failed_one_is_retried_and_markup_stays_text(live_server, transactional_db, browser, fault_server):  # noqa: F811
    fault_server.fails = 1
    gated = ModelEndpoint.objects.create(name="gated", base_url=fault_server.base_url, model="gated")
    flaky = ModelEndpoint.objects.create(name="flaky", base_url=fault_server.base_url, model="flaky500")
    project = live_project(gated, flaky)
    page, errors = sign_in(browser, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/live/")
    send(page, "<b>hello</b>")
    # the first try of the flaky one fails: a clear message and a retry, nothing saved
    page.wait_for_selector("#live-retry:not([hidden])", timeout=30_000)
    assert "failed (HTTP 500)" in page.locator("#live-status").inner_text()
    assert "Nothing was saved" in page.locator("#live-status").inner_text()
    page.click("#live-retry")
    # the gated model sends its first two pieces and waits for the test: they show in the
    # pane while the stream is still open
    page.wait_for_selector("#live-replies :text('Held at')", timeout=30_000)
    assert "answering" in page.locator("#live-status").inner_text()
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], "live-streaming.png"), full_page=True)
    fault_server.gate.set()
    page.wait_for_selector("#judgement-form", timeout=30_000)
    assert "<b>hello</b>" in page.locator(".conversation").inner_text()  # the annotator's own markup is text too
    assert LiveTurn.objects.get().attempts == 2
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], "live-judge.png"), full_page=True)
    assert not errors, errors


def test_a_reply_that_tries_to_run_script(live_server, transactional_db, browser, fault_server):  # noqa: F811
    xss = ModelEndpoint.objects.create(name="xss", base_url=fault_server.base_url, model="xss")
    ok = ModelEndpoint.objects.create(name="ok", base_url=fault_server.base_url, model="ok")
    project = live_project(xss, ok)
    page, errors = sign_in(browser, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/live/")
    send(page, "hi")
    page.wait_for_selector("#judgement-form", timeout=30_000)
    assert page.evaluate("window.__xss") is None
    replies = page.locator(".reply-body").all_inner_texts()
    assert any("<script>window.__xss = 1</script>" in text for text in replies)  # shown as text
    assert page.locator(".reply-body a[href^='javascript']").count() == 0 and page.locator(".reply-body img").count() == 0
    assert not errors, errors
