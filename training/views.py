"""The staff dashboard page. Its data comes from the REST API (dashboard.js polls it)."""

import re

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from inference.models import ModelEndpoint
from labeling.management.commands.seed_demo import DEMO_PROJECT
from labeling.models import Judgement, JudgementSource, Project

from . import services, simulated_history
from .models import RunKind, VersionKind
from .defaults import default_policy_state


@staff_member_required
@ensure_csrf_cookie
def dashboard(request):
    """?project=<id> selects the project (the project pages link here); without it, the first by name."""
    projects = Project.objects.order_by("name")
    raw = request.GET.get("project", "")
    if raw and not (re.fullmatch(r"[0-9]{1,18}", raw) and int(raw) > 0):
        return HttpResponseBadRequest("project: must be a project id (a whole number from 1)\n", content_type="text/plain; charset=utf-8")
    selected = projects.filter(pk=int(raw)).first() if raw else projects.first()
    if raw and selected is None:
        raise Http404("no such project")  # not silently another project's dashboard
    # runs of kind "endpoints" have their own form (which endpoints, which prompts)
    kinds = [(value, label) for value, label in RunKind.choices if value not in (RunKind.ENDPOINTS, RunKind.SIMULATE)]
    context = {"projects": projects, "project": selected, "kinds": kinds,
               "endpoints": ModelEndpoint.objects.filter(is_active=True).order_by("builtin", "name")}
    if selected is not None:
        context["default_prompts"] = services.training_settings_for(selected).generate_prompts
        # rendered once here so the page says it before the first poll; dashboard.js keeps it current
        context["active_policy"] = services.active_version(selected, VersionKind.POLICY)
        context["active_reward"] = services.active_version(selected, VersionKind.REWARD)
        plans = run_plans(selected, context["active_policy"], context["active_reward"])
        context["kinds"] = [(value, label, plans[value]) for value, label in kinds]
        context["default_policy"] = default_policy_state()
        if selected.name == DEMO_PROJECT:  # (not a scan of a big project's prompts on every page; the run checks the prompts)
            context["demo"] = {
                "plan": plans[RunKind.SIMULATE],
                "simulated": Judgement.objects.filter(task__project=selected, source=JudgementSource.SIMULATED).count(),
                "human": services.human_judgement_count(selected),
            }
        shortfall = services.reward_training_shortfall(selected)
        if shortfall:
            context["reward_shortfall"] = {"have": shortfall[0], "needed": shortfall[1], "missing": shortfall[1] - shortfall[0]}
    return render(request, "training/dashboard.html", context)


def run_plans(project, policy, reward) -> dict[str, str]:
    """{kind: what its "Start" button will run, in words}, for the confirmations (#20: one
    click started minutes of work without saying so). Built once per page."""
    rules = services.training_settings_for(project)
    policy_name = f"policy v{policy.number}" if policy else "the built-in default policy"
    reward_name = f"reward v{reward.number}" if reward else "no reward model yet"
    gate = "It is promoted only if it measurably learned (the gate's reason is shown either way)."
    algorithm = rules.policy_algorithm.upper()
    plans = {
        RunKind.REWARD: f"Train a reward model on the project's judgements (a held-out share validates it). {gate}",
        RunKind.SFT: f"Fine-tune {policy_name} on the replies people preferred. {gate}",
        RunKind.GENERATE: f"Generate replies of {policy_name} for {rules.generate_prompts} prompts and make comparison tasks of them.",
        RunKind.DPO: f"Train {policy_name} with DPO on the judgements directly. {gate}",
        RunKind.SIMULATE: (f"Have {policy_name} write {simulated_history.REPLIES_PER_PROMPT} replies to each demo prompt, and "
                           f"{simulated_history.ANNOTATORS} simulated annotators rank them by their word overlap with the demo's "
                           "reference answers. The judgements are marked as simulated."),
    }
    for online in (RunKind.PPO, RunKind.RLOO, RunKind.GRPO):
        plans[online] = f"Train {policy_name} with {online.label} against {reward_name}, then compare it with its start on held-out prompts. {gate}"
    if rules.policy_algorithm == "dpo":
        stages = "DPO on the judgements, then new replies"
    else:
        retrain = "retrained" if services.new_judgements_since_trained(project) != 0 else "kept (no new judgements)"
        stages = f"the reward model ({retrain}), then {algorithm} against it, then new replies for {rules.generate_prompts} prompts"
    plans[RunKind.CYCLE] = f"A full cycle: {stages}. Each stage runs only if the one before it was promoted."
    return {kind: f"{text} This takes minutes of the worker's time. Start it?" for kind, text in plans.items()}
