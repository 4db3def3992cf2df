"""Issue #8 part 3: sign-in throttling (django-axes) on the login pages and the API, an admin
unlock, and password validators wherever a password is set."""

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.services import create_annotator

LIMIT = settings.AXES_FAILURE_LIMIT


def sign_in(client, url, username, password, ip):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_a_username_is_locked_after_the_limit_wherever_the_attempts_come_from(client, annotator, admin_user, url):
    username = admin_user.username if url.startswith("/admin") else annotator.username
    password = "keeper-of-keys-3" if url.startswith("/admin") else "wonderland-key-1"
    for i in range(LIMIT - 1):
        assert sign_in(client, url, username, "wrong", f"10.0.0.{i + 1}").status_code == 200  # the form again, with its error
    assert sign_in(client, url, username, "wrong", "10.0.0.99").status_code == 429  # the LIMIT-th failure locks
    locked = sign_in(client, url, username, password, "10.0.1.1")  # right password, fresh address
    assert locked.status_code == 429
    assert b"Too many failed sign-ins" in locked.content and b"ask a labeling admin" in locked.content
    assert b"for 15 minutes" in locked.content  # the cool-off in words (AXES_COOLOFF_MINUTES)
    assert "_auth_user_id" not in client.session


def test_an_address_is_locked_after_the_limit_whatever_the_usernames(client, annotator, other_annotator):
    for i in range(LIMIT):
        sign_in(client, "/accounts/login/", f"guess{i}", "wrong", "10.9.9.9")
    assert sign_in(client, "/accounts/login/", "bob", "builder-key-2", "10.9.9.9").status_code == 429
    ok = sign_in(client, "/accounts/login/", "bob", "builder-key-2", "10.9.9.10")
    assert ok.status_code == 302 and client.session["_auth_user_id"] == str(other_annotator.pk)


def test_fewer_failures_than_the_limit_then_success_resets_the_count(client, annotator):
    for _ in range(LIMIT - 1):
        sign_in(client, "/accounts/login/", "alice", "wrong", "10.1.1.1")
    assert sign_in(client, "/accounts/login/", "alice", "wonderland-key-1", "10.1.1.1").status_code == 302
    client.logout()
    for _ in range(LIMIT - 1):
        sign_in(client, "/accounts/login/", "alice", "wrong", "10.1.1.1")
    assert sign_in(client, "/accounts/login/", "alice", "wonderland-key-1", "10.1.1.1").status_code == 302


def test_wrong_api_tokens_lock_the_address(annotator):
    good = Token.objects.get(user=annotator).key
    attacker, other = APIClient(REMOTE_ADDR="10.6.6.6"), APIClient(REMOTE_ADDR="10.7.7.7")
    for i in range(LIMIT):
        attacker.credentials(HTTP_AUTHORIZATION=f"Token wrong{i}")
        assert attacker.get("/api/v1/projects/").status_code == (401 if i < LIMIT - 1 else 429)
    attacker.credentials(HTTP_AUTHORIZATION=f"Token {good}")
    refused = attacker.get("/api/v1/projects/")
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.json()["detail"]
    other.credentials(HTTP_AUTHORIZATION=f"Token {good}")
    assert other.get("/api/v1/projects/").status_code == 200
    assert APIClient(REMOTE_ADDR="10.6.6.6").get("/api/v1/projects/").status_code == 401  # no token: not a failure, just anonymous


def test_an_admin_unlocks_in_the_django_admin(client, annotator, admin_user):
    for i in range(LIMIT):
        sign_in(client, "/accounts/login/", "alice", "wrong", "10.2.2.2")
    assert sign_in(client, "/accounts/login/", "alice", "wonderland-key-1", "10.2.2.3").status_code == 429
    admin = type(client)()
    admin.force_login(admin_user)
    page = admin.get("/admin/axes/accessattempt/")
    assert page.status_code == 200 and b"alice" in page.content
    ids = [str(pk) for pk in AccessAttempt.objects.filter(username="alice").values_list("pk", flat=True)]
    confirm = admin.post("/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"})
    assert confirm.status_code == 302
    assert not AccessAttempt.objects.filter(username="alice").exists()
    assert sign_in(client, "/accounts/login/", "alice", "wonderland-key-1", "10.2.2.3").status_code == 302


@pytest.mark.parametrize("password, reason", [
    ("short", "too short"),
    ("password123", "too common"),
    ("carol-carol", "too similar to the username"),
])
def test_create_annotator_applies_the_password_validators(db, password, reason):
    with pytest.raises(ValidationError) as error:
        create_annotator(username="carol-carol", password=password)
    assert reason in " ".join(error.value.messages)
    with pytest.raises(CommandError, match=reason):
        call_command("create_annotator", "carol-carol", password=password)
    assert create_annotator(username="carol-carol", password="a-long-and-rare-phrase").check_password("a-long-and-rare-phrase")


def test_demo_accounts_pass_the_validators(db):
    from labeling.management.commands.seed_demo import DEMO_ACCOUNTS

    for username, password, is_admin in DEMO_ACCOUNTS:
        assert create_annotator(username=username, password=password, is_admin=is_admin).check_password(password)


@pytest.mark.parametrize(
    "proxies, forwarded, expected",
    [
        (0, "203.0.113.9", "10.0.0.1"),  # no proxy: the header is the client's own claim
        (1, "203.0.113.9", "203.0.113.9"),  # nginx sets it to its client's address
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # what the client wrote in front counts for nothing
        (2, "198.51.100.7, 203.0.113.9", "198.51.100.7"),  # a load balancer, then nginx
        (2, "203.0.113.9", "10.0.0.1"),  # fewer entries than proxies: the connection's address
        (1, "not-an-address", "10.0.0.1"),
        (1, "", "10.0.0.1"),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_the_client_address_behind_proxies(settings, rf, proxies, forwarded, expected):
    from feedback_site.client_ip import client_ip

    settings.PROXY_COUNT = proxies
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected
