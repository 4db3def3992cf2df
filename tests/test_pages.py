"""Annotator pages: home progress, comparison page, submit / skip flow, XSS, guidelines."""

import re

import pytest
from django.urls import reverse

from labeling.models import Assignment, ComparisonTask, Judgement
from labeling.rendering import render_markdown

from .conftest import import_items, make_items

ATTACKS = [
    "<script>alert('x')</script>",
    '<img src=x onerror="alert(1)">',
    "[click me](javascript:alert(1))",
    '<a href="javascript:alert(2)">raw link</a>',
    '<iframe src="https://evil.example"></iframe>',
    "<div onmouseover=\"alert(3)\">hover</div>",
    '<svg onload="alert(4)"></svg>',
]


def test_markdown_renders_code_lists_tables():
    html = render_markdown("# T\n\n- one\n- two\n\n```python\nprint(1 < 2)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[ok](https://example.com)")
    assert "<li>one</li>" in html and "<table>" in html and "<td>1</td>" in html
    assert '<code class="language-python">print(1 &lt; 2)' in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html


@pytest.mark.parametrize("attack", ATTACKS)
def test_markdown_output_is_inert(attack):
    html = render_markdown(f"before {attack} after")
    tags = "".join(re.findall(r"<[^>]+>", html))
    assert "<script" not in html and "<iframe" not in html and "<svg" not in html and "<img" not in html
    assert not re.search(r"\son\w+\s*=", tags)
    assert "javascript:" not in tags


def test_comparison_page_shows_attacks_as_inert_text(client, project, annotator):
    import_items(project, [{"messages": [{"role": "user", "content": "Prompt " + " ".join(ATTACKS)}], "responses": ["Reply " + a for a in ATTACKS[:4]]}])
    client.force_login(annotator)
    page = client.get(reverse("labeling:label", args=[project.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    tags = "".join(re.findall(r"<[^>]+>", html))
    assert "<script>alert" not in html and "javascript:" not in tags and "onerror" not in tags and "onload" not in tags
    assert "<iframe" not in html and "<svg" not in html
    assert "&lt;script&gt;alert" in html  # shown to the annotator as text
    assert "script-src 'self'" in page["Content-Security-Policy"]
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == ['<script src="/static/labeling/highlight.js">', '<script src="/static/labeling/compare.js">']


def test_home_shows_progress_and_label_flow(client, project, annotator):
    import_items(project, make_items(3))
    client.force_login(annotator)
    home = client.get(reverse("labeling:home")).content.decode()
    assert re.search(r'class="tasks-left">3<', home) and re.search(r'class="judged-total">0<', home)
    page = client.get(reverse("labeling:label", args=[project.pk]))
    assignment = Assignment.objects.get(annotator=annotator)
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', page.content.decode()).group(1)
    form = {"choice": "A", "strength": "3", "rationale": "clearer", "flags": ["unsafe"], "idempotency_key": key, "time_spent_ms": "1234"}
    response = client.post(reverse("labeling:submit", args=[assignment.pk]), form)
    assert response.status_code == 302 and response["Location"] == reverse("labeling:label", args=[project.pk])
    judgement = Judgement.objects.get()
    assert judgement.flags == ["unsafe"] and judgement.time_spent_ms == 1234 and judgement.rationale == "clearer"
    # a double click posts the same form again: nothing new is stored
    client.post(reverse("labeling:submit", args=[assignment.pk]), form)
    assert Judgement.objects.count() == 1
    home = client.get(reverse("labeling:home")).content.decode()
    assert re.search(r'class="judged-today">1<', home) and re.search(r'class="tasks-left">2<', home)


def test_invalid_form_shows_the_field_and_keeps_the_task(client, project, annotator):
    import_items(project, make_items(1))
    client.force_login(annotator)
    client.get(reverse("labeling:label", args=[project.pk]))
    assignment = Assignment.objects.get()
    response = client.post(reverse("labeling:submit", args=[assignment.pk]), {"choice": "A"})
    # post/redirect/get: back to the task's GET-able page, which shows the error and the input
    assert response.status_code == 302 and response["Location"] == reverse("labeling:label", args=[project.pk])
    page = client.get(response["Location"]).content.decode()
    assert "strength" in page and 'value="A" id="choice-A" checked' in page and Judgement.objects.count() == 0


def test_foreign_assignment_page_is_403(client, project, annotator, other_annotator):
    import_items(project, make_items(1))
    client.force_login(annotator)
    client.get(reverse("labeling:label", args=[project.pk]))
    assignment = Assignment.objects.get()
    client.force_login(other_annotator)
    assert client.post(reverse("labeling:submit", args=[assignment.pk]), {"choice": "tie"}).status_code == 403
    assert client.post(reverse("labeling:skip", args=[assignment.pk])).status_code == 403
    assert Assignment.objects.get().state == "leased"


def test_empty_queue_page(client, project, annotator):
    client.force_login(annotator)
    page = client.get(reverse("labeling:label", args=[project.pk]))
    assert page.status_code == 200 and 'id="queue-empty"' in page.content.decode()


def test_pages_hide_which_model_wrote_a_reply(client, project, annotator):
    import_items(project, make_items(1))
    ComparisonTask.objects.get().responses.update(origin="secret-model-v7")
    client.force_login(annotator)
    assert "secret-model-v7" not in client.get(reverse("labeling:label", args=[project.pk])).content.decode()


def test_ranking_page_for_three_replies(client, project, annotator):
    import_items(project, make_items(1, replies=3))
    client.force_login(annotator)
    html = client.get(reverse("labeling:label", args=[project.pk])).content.decode()
    assert html.count('name="rank_') == 3 and 'value="ranking"' in html
    assignment = Assignment.objects.get()
    client.post(reverse("labeling:submit", args=[assignment.pk]), {"choice": "ranking", "rank_0": "1", "rank_1": "1", "rank_2": "2"})
    order = assignment.display_order
    assert Judgement.objects.get().ranking == [sorted([order[0], order[1]]), [order[2]]]


def test_guidelines_and_login_required(client, project, annotator):
    assert client.get(reverse("labeling:home")).status_code == 302
    client.force_login(annotator)
    page = client.get(reverse("labeling:guidelines", args=[project.pk])).content.decode()
    assert "<strong>careful</strong>" in page


def test_an_unknown_address_gets_the_apps_404_page_even_with_debug_on(client, settings, admin_user):
    """#20: `make run` (DEBUG=1) showed Django's technical 404, which lists every URL pattern."""
    settings.DEBUG = True
    client.force_login(admin_user)
    page = client.get("/no/such/page/")
    html = page.content.decode()
    assert page.status_code == 404 and "Page not found" in html and 'href="/manage/' in html
    assert "URLconf" not in html and "DEBUG = True" not in html and "Content-Security-Policy" in page.headers
    api = client.get("/api/v1/no-such-thing/")
    assert api.status_code == 404 and api.json() == {"detail": "Not found."}
    settings.DEBUG = False
    assert "Page not found" in client.get("/no/such/page/").content.decode()  # the same page as in production
