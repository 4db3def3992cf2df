"""The app's policies served over the OpenAI protocol (`manage.py serve_policies`, which runs
`transformers serve`), talked to by the official `openai` client, by the app's own built-in
endpoints, and rendering a conversation exactly as the trainers do."""

import io

import pytest
from django.core.management import call_command
from openai import OpenAI

from inference.models import ModelEndpoint, active_policy_key
from inference.services import probe_endpoint
from training.endpoints import sync_policy_endpoints
from training.ml.text import render_prompt

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is tea?"},
    {"role": "assistant", "content": "A drink."},
    {"role": "user", "content": "And coffee?"},
]


def test_the_command_serves_where_policy_server_url_points(settings):
    settings.POLICY_SERVER_URL = "http://127.0.0.1:8123/v1"
    out = io.StringIO()
    call_command("serve_policies", "--print", "--device", "cpu", stdout=out)
    command = out.getvalue().split()
    assert command[1:3] == ["serve", "--host"] and command[3:6] == ["127.0.0.1", "--port", "8123"]
    assert "--device" in command and command[command.index("--device") + 1] == "cpu"


def test_the_official_client_talks_to_a_served_policy(policy_server):
    api = OpenAI(base_url=policy_server.base_url, api_key="unused", max_retries=0)
    model = str(policy_server.policies[0])
    reply = api.chat.completions.create(model=model, messages=CONVERSATION, max_tokens=8, temperature=1.0, seed=1)
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8
    chunks = list(api.chat.completions.create(model=model, messages=CONVERSATION, max_tokens=8, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_the_server_prompts_the_policy_as_the_trainers_do(policy_server):
    """Greedy decoding of the chat request equals greedy decoding of the trainers' own
    rendering of the conversation sent as a plain completion: same prompt, same tokens."""
    api = OpenAI(base_url=policy_server.base_url, api_key="unused", max_retries=0)
    model = str(policy_server.policies[1])
    chat = api.chat.completions.create(model=model, messages=CONVERSATION, max_tokens=10, temperature=0)
    plain = api.completions.create(model=model, prompt=render_prompt(CONVERSATION), max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.django_db
def test_the_projects_active_policy_answers_as_a_built_in_endpoint(project, policy_server, settings):
    settings.POLICY_SERVER_URL = policy_server.base_url
    settings.DEFAULT_POLICY_PATH = policy_server.policies[0]
    sync_policy_endpoints(project)
    endpoint = ModelEndpoint.objects.get(builtin=active_policy_key(project.pk))
    result = probe_endpoint(endpoint=endpoint)
    assert result.ok, result.message
    assert result.latency_ms is not None and result.message.startswith("answered in")
