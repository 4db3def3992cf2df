"""The Django admin, as a labeling admin, refuses what the pages and the trainers cannot read
(#19: 11 of the attacker's 500s came from edits here)."""

import pytest

from labeling.models import Prompt
from training.models import ProjectTrainingSettings


@pytest.fixture
def admin_client_(client, admin_user):
    client.force_login(admin_user)
    return client


def prompt_form(prompt, messages, metadata="{}"):
    return {"project": prompt.project_id, "messages": messages, "source_format": "chat", "source": "x", "metadata": metadata,
            "content_hash": prompt.content_hash}


@pytest.mark.parametrize(
    "messages, metadata",
    [
        ('{"a": 1}', "{}"),
        ('[{"role": "user"}]', "{}"),
        ('[{"role": "user", "content": 5}]', "{}"),
        ('[{"role": "user", "content": NaN}]', "{}"),
        ("[" * 200 + "]" * 200, "{}"),
        ('[{"role": "user", "content": "nul \\u0000 here"}]', "{}"),
        ('[{"role": "user", "content": "fine"}]', '{"score": NaN}'),
        ('[{"role": "user", "content": "fine"}]', '{"score": 1e999}'),
        ('[{"role": "user", "content": "fine"}]', "[1, 2]"),
    ],
)
def test_prompt_edits_that_cannot_be_stored_are_refused(admin_client_, tasks, messages, metadata):
    prompt = tasks[0].prompt
    before = list(prompt.messages)
    response = admin_client_.post(f"/admin/labeling/prompt/{prompt.pk}/change/", prompt_form(prompt, messages, metadata))
    assert response.status_code == 200 and b"errornote" in response.content  # the form again, with the reason
    prompt.refresh_from_db()
    assert prompt.messages == before


def test_a_good_prompt_edit_is_saved(admin_client_, tasks):
    prompt = tasks[0].prompt
    response = admin_client_.post(f"/admin/labeling/prompt/{prompt.pk}/change/",
                                  prompt_form(prompt, '[{"role": "user", "content": "edited"}]', '{"note": "ok"}'))
    assert response.status_code == 302
    prompt.refresh_from_db()
    assert prompt.messages == [{"role": "user", "content": "edited"}] and prompt.metadata == {"note": "ok"}


@pytest.mark.parametrize("config", ["[1, 2]", '{"lr": "fast"}', '{"no_such_setting": 1}'])
def test_training_settings_that_a_run_cannot_read_are_refused(admin_client_, project, config):
    row = ProjectTrainingSettings.objects.create(project=project)
    data = {
        "project": project.pk, "auto_retrain": "on", "retrain_min_new_judgements": 100, "generate_prompts": 20,
        "generate_replies_per_prompt": 1, "reward_config": config, "ppo_config": "{}", "dpo_config": "{}", "online_rl_config": "{}",
        "sampling_config": "{}", "policy_algorithm": "ppo", "reward_min_accuracy": 0.5, "reward_accuracy_margin": 0.02, "ppo_max_kl": 10,
        "reward_min_judgements": 50, "significance_level": 0.05, "policy_eval_prompts": 32,
    }
    response = admin_client_.post(f"/admin/training/projecttrainingsettings/{row.pk}/change/", data)
    assert response.status_code == 200 and b"errornote" in response.content
    row.refresh_from_db()
    assert row.reward_config == {}
    data["reward_config"] = '{"epochs": 2}'
    assert admin_client_.post(f"/admin/training/projecttrainingsettings/{row.pk}/change/", data).status_code == 302
    row.refresh_from_db()
    assert row.reward_config == {"epochs": 2}
