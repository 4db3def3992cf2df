"""Write paths of the training app: start, cancel, reap runs; register, promote, roll back
versions; start the periodic cycle. Celery tasks, API views, admin actions and commands
call these."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from labeling.models import Judgement, JudgementSource, Project

from .endpoints import sync_after_commit
from .exceptions import InvalidTrainingRequest, RunAlreadyActive, RunNotCancellable, VersionNotPromotable
from .ml.significance import binomial_p_value
from .run_config import PLAIN_KEYS, STAGE_CLASSES, config_problems
from .models import (
    ACTIVE_RUN_STATUSES,
    ModelVersion,
    ProjectTrainingSettings,
    RunKind,
    RunStatus,
    TrainingRun,
    VersionKind,
    VersionStatus,
)

log = logging.getLogger(__name__)


def training_settings_for(project: Project) -> ProjectTrainingSettings:
    settings_row, _ = ProjectTrainingSettings.objects.get_or_create(project=project)
    return settings_row


def human_judgement_count(project: Project) -> int:
    return Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR).count()


# --------------------------------------------------------------------------- runs


# Keys a run's config may hold: per-stage overrides of the engine's config dataclasses
# (checked field by field by the worker) and a few plain options.
STAGE_CONFIG_KEYS = tuple(STAGE_CLASSES)
PLAIN_CONFIG_KEYS = tuple(PLAIN_KEYS)


def validate_run_config(config) -> dict:
    """The run config, or InvalidTrainingRequest (HTTP 400) naming every bad key and why (run_config.py)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidTrainingRequest("must be a JSON object", field="config")
    problems = config_problems(config)
    if problems:
        raise InvalidTrainingRequest("; ".join(f"'{path}' {reason}" for path, reason in problems), field="config")
    return config


def reward_training_shortfall(project: Project, config: dict | None = None) -> tuple[int, int] | None:
    """(judgements a reward model would train on now, the minimum) when they are fewer than
    the minimum below which it is never promoted (reward_min_judgements), else None. Counted
    as the run counts them: the quality filter of `config`, judgements with a winner, less
    the held-out validation share. Exact only when it can matter (few judgements)."""
    from .ml.data import build_examples, split_by_prompt
    from .ml.reward import RewardTrainingConfig

    config = config or {}
    rules = training_settings_for(project)
    needed = rules.reward_min_judgements
    if Judgement.objects.filter(task__project=project).values("pk")[: 3 * needed].count() >= 3 * needed:
        return None  # surely enough: no need to read them (a count that stops there: the dashboard asks on every page)
    from labeling.quality_filter import JudgementFilter

    from .selectors import training_judgements

    overrides = {**(rules.reward_config or {}), **(config.get("reward") or {})}
    defaults = RewardTrainingConfig()
    tie_weight, seed = overrides.get("tie_weight", defaults.tie_weight), overrides.get("seed", defaults.seed)
    examples = build_examples(training_judgements(project, quality=JudgementFilter.from_options(config.get("filter"))),
                              use_margin=bool(config.get("use_margin")), include_ties=tie_weight > 0)
    train, _ = split_by_prompt(examples, float(config.get("val_fraction", 0.2)), seed=seed)
    return (len(train), needed) if len(train) < needed else None


POLICY_KINDS = (RunKind.PPO, RunKind.RLOO, RunKind.GRPO, RunKind.DPO, RunKind.SFT, RunKind.GENERATE, RunKind.CYCLE, RunKind.SIMULATE)


def check_models_ready(project: Project, kind: str) -> None:
    """Refuse a run that needs the built-in default policy while it is still being built (or
    missing), saying how far the build is (#20: `make run` serves pages at once and builds it
    in the background)."""
    from .defaults import default_policy_state

    needs_default = (kind in POLICY_KINDS and active_version(project, VersionKind.POLICY) is None) or (
        kind in (RunKind.REWARD, RunKind.CYCLE) and settings.REWARD_BACKBONE == "policy"
    )
    if not needs_default:
        return
    state = default_policy_state()
    if state["state"] != "ready":
        raise InvalidTrainingRequest(f"{state['message']}; training and generation start from it, so this run waits for it", field="kind")


def check_enough_judgements(project: Project, kind: str, config: dict | None = None) -> None:
    """Refuse, before any work, a run whose reward model could not be promoted for want of
    judgements (#20: a reward stage trained for 77 s on 12 judgements, below the known 50)."""
    trains_reward = kind == RunKind.REWARD or (
        kind == RunKind.CYCLE and training_settings_for(project).policy_algorithm != "dpo"
        and new_judgements_since_trained(project) != 0  # a cycle keeps the active reward model when nothing is new
    )
    if not trains_reward:
        return
    shortfall = reward_training_shortfall(project, config)
    if shortfall is not None:
        have, needed = shortfall
        raise InvalidTrainingRequest(
            f"a reward model needs at least {needed} judgements with a winner to train on (the project's reward_min_judgements), "
            f"and {have} are there now (after the held-out share that validates it): {needed - have} more needed",
            field="kind",
        )


def start_run(*, project: Project, kind: str, config: dict | None = None, requested_by=None, enqueue: bool = True) -> TrainingRun:
    """Create a queued run and hand it to a worker on the `training` queue.

    A second queued-or-running run of the same kind for the same project is refused
    (RunAlreadyActive, HTTP 409); the database constraint makes that race-free.
    """
    if kind not in RunKind.values:
        raise InvalidTrainingRequest(f"must be one of {', '.join(RunKind.values)}", field="kind")
    config = validate_run_config(config)
    if kind != RunKind.ENDPOINTS:
        check_models_ready(project, kind)
    check_enough_judgements(project, kind, config)
    if kind == RunKind.ENDPOINTS:
        from .endpoint_runs import check_request

        check_request(project, config)
    if kind == RunKind.SIMULATE:
        from .simulated_history import check_possible

        check_possible(project, config)
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(
                project=project,
                kind=kind,
                config=config,
                requested_by=requested_by if getattr(requested_by, "is_authenticated", False) else None,
            )
    except IntegrityError as exc:
        active = TrainingRun.objects.filter(project=project, kind=kind, status__in=ACTIVE_RUN_STATUSES, parent=None).first()
        raise RunAlreadyActive(
            f"a {kind} run is already {active.status if active else 'active'} for this project"
            + (f" (run {active.pk})" if active else "")
        ) from exc
    if enqueue:
        transaction.on_commit(lambda: enqueue_run(run.pk))
    return run


def enqueue_run(run_id: int) -> None:
    """Send the run to the broker; if the broker is unreachable the run fails visibly.
    Training goes to the `training` queue (the GPU workers); a run of kind "endpoints" only
    waits on HTTP and goes to `default`, so that it never queues behind a training run."""
    from .tasks import run_training

    kind = TrainingRun.objects.filter(pk=run_id).values_list("kind", flat=True).first()
    try:
        result = run_training.apply_async(args=[run_id], queue="default" if kind == RunKind.ENDPOINTS else "training", retry=False)
    except Exception as exc:  # noqa: BLE001 - any broker error must end up on the run
        log.exception("could not enqueue run %s", run_id)
        TrainingRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.FAILED, error=f"could not reach the task broker: {exc}", finished_at=timezone.now()
        )
        return
    TrainingRun.objects.filter(pk=run_id).update(celery_task_id=result.id or "")


def cancel_run(*, run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next step."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status == RunStatus.QUEUED:
            run.status, run.finished_at, run.cancel_requested = RunStatus.CANCELLED, timezone.now(), True
            run.save(update_fields=["status", "finished_at", "cancel_requested"])
        elif run.status == RunStatus.RUNNING:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
            TrainingRun.objects.filter(parent=run, status__in=ACTIVE_RUN_STATUSES).update(cancel_requested=True)
        else:
            raise RunNotCancellable(f"this run already {run.status}")
    return run


def reap_stale_runs(*, now=None, timeout_seconds: int | None = None) -> list[int]:
    """Mark running runs whose heartbeat stopped as failed (their worker died)."""
    now = now or timezone.now()
    timeout = timeout_seconds if timeout_seconds is not None else settings.TRAINING_HEARTBEAT_TIMEOUT
    cutoff = now - timedelta(seconds=timeout)
    with transaction.atomic():
        stale = list(
            TrainingRun.objects.select_for_update(skip_locked=True)
            .filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff)
            .values_list("pk", flat=True)
        )
        TrainingRun.objects.filter(pk__in=stale).update(
            status=RunStatus.FAILED,
            finished_at=now,
            error=f"no heartbeat for more than {timeout} s: the worker died or was killed; nothing was promoted",
        )
    for run_id in stale:
        log.warning("reaped stale run %s", run_id)
    return stale


def resend_lost_runs(*, now=None, after_seconds: int | None = None) -> list[int]:
    """Send again the queued runs that no worker claimed within `after_seconds` of being
    sent: the broker may have lost the message (Redis restarted without persistence).

    Safe to repeat: a run executes once however often it is delivered, because the worker
    claims it queued -> running under a row lock and skips every other copy
    (runner._claim). For a queued run heartbeat_at records when it was last re-sent.
    Stage runs of a cycle (parent set) run inside their parent and are never sent.
    """
    now = now or timezone.now()
    after = after_seconds if after_seconds is not None else settings.TRAINING_QUEUED_RESEND_SECONDS
    cutoff = now - timedelta(seconds=after)
    with transaction.atomic():
        lost = list(
            TrainingRun.objects.select_for_update(skip_locked=True)
            .filter(status=RunStatus.QUEUED, parent=None, created_at__lt=cutoff)
            .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff))
            .values_list("pk", flat=True)
        )
        TrainingRun.objects.filter(pk__in=lost).update(heartbeat_at=now)
    for run_id in lost:
        log.warning("run %s still queued after %s s: sending it to the broker again", run_id, after)
        enqueue_run(run_id)
    return lost


# --------------------------------------------------------------------------- versions


def register_version(*, project: Project, kind: str, artifact_path: str, run: TrainingRun | None, metrics: dict, parent=None) -> ModelVersion:
    with transaction.atomic():
        # Django drops FOR UPDATE from an aggregate; lock the project row to number versions one at a time.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        number = (ModelVersion.objects.filter(project=project, kind=kind).aggregate(n=Max("number"))["n"] or 0) + 1
        return ModelVersion.objects.create(
            project=project, kind=kind, number=number, artifact_path=artifact_path, produced_by=run, metrics=metrics, parent=parent
        )


def active_version(project: Project, kind: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=kind, status=VersionStatus.ACTIVE).first()


def promote_version(*, version: ModelVersion, note: str = "", by=None, override: bool = False) -> ModelVersion:
    """Make `version` the active one of its kind; the previous active one is retired.

    A version the promotion gate refused is promoted by hand (`by`) only with `override`,
    and its note then records who overrode the gate and what the gate had said (#20)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == VersionStatus.ACTIVE:
            return version
        if by is not None:
            name = getattr(by, "username", str(by))
            if version.gate_refused and version.promoted_at is None:
                if not override:
                    raise VersionNotPromotable(
                        f"the promotion gate refused {version.kind} v{version.number}: {version.promotion_note}. "
                        "Promote it anyway only with override=true; the override is recorded with your name"
                    )
                note = f"promoted by {name}, overriding the gate, which said: {version.promotion_note}"[:500]
            else:
                note = note or f"promoted by {name}"
        ModelVersion.objects.filter(project=version.project, kind=version.kind, status=VersionStatus.ACTIVE).update(
            status=VersionStatus.RETIRED
        )
        version.status, version.promoted_at = VersionStatus.ACTIVE, timezone.now()
        if note:
            version.promotion_note = note
        version.save(update_fields=["status", "promoted_at", "promotion_note"])
        if version.kind == VersionKind.POLICY:
            sync_after_commit(version.project)
    return version


ROLLBACK_TARGETS = ("previous", "builtin")


def roll_back(*, project: Project, kind: str, to: str = "previous") -> ModelVersion | None:
    """Re-activate the version that was active before the current one; None when the
    project is back on the built-in default policy.

    A policy has a built-in default to fall back to (DEFAULT_POLICY_PATH), so rolling back
    past its first version, or `to="builtin"`, leaves no policy version active and the
    runner starts PPO, SFT and generation from the default (runner._starting_policy). A
    reward model has nothing to fall back to: rolling back past its first version is a 409.
    """
    if to not in ROLLBACK_TARGETS:
        raise InvalidTrainingRequest(f"must be one of {', '.join(ROLLBACK_TARGETS)}", field="to")
    has_builtin = kind == VersionKind.POLICY
    if to == "builtin" and not has_builtin:
        raise InvalidTrainingRequest(f"only a policy has a built-in default; a {kind} can only go back to its previous version", field="to")
    with transaction.atomic():
        if kind == VersionKind.POLICY:
            sync_after_commit(project)
        # lock the project row: two roll backs at once must not both step back from the same version
        Project.objects.select_for_update().filter(pk=project.pk).first()
        current = ModelVersion.objects.select_for_update().filter(project=project, kind=kind, status=VersionStatus.ACTIVE).first()
        if current is None:
            if has_builtin:
                if to == "builtin":
                    return None  # already there: asking twice is not an error
                raise VersionNotPromotable("the built-in default policy is in use: there is nothing earlier to roll back to")
            raise VersionNotPromotable(f"no active {kind} version to roll back from")
        previous = None
        if to == "previous":
            previous = (
                ModelVersion.objects.filter(project=project, kind=kind, status=VersionStatus.RETIRED, promoted_at__isnull=False, number__lt=current.number)
                .order_by("-number")
                .first()
            )
            if previous is None and not has_builtin:
                raise VersionNotPromotable(f"{kind} v{current.number} has no earlier active version to return to")
        current.status = VersionStatus.RETIRED
        current.save(update_fields=["status"])
        if previous is None:
            log.info("project %s: %s v%s retired, back on the built-in default policy", project.pk, kind, current.number)
            return None
        previous.status, previous.promoted_at = VersionStatus.ACTIVE, timezone.now()
        previous.save(update_fields=["status", "promoted_at"])
    return previous


def _against_a_coin(accuracy: float | None, pairs: int, alpha: float, *, ranked: str, learned: str, no_pairs: str) -> tuple[str | None, int, float]:
    """The first test of the reward-model and DPO gates: (why it fails, or None; pairs ranked
    right; one-sided binomial p-value of doing that well by chance). `ranked` is the sentence
    of what it did, with {correct}, {pairs} and {accuracy}; `learned`, what it did not show."""
    if accuracy is None or not pairs:
        return no_pairs, 0, 1.0
    correct = round(accuracy * pairs)
    p_value = binomial_p_value(correct, pairs)
    if p_value < alpha:
        return None, correct, p_value
    done = ranked.format(correct=correct, pairs=pairs, accuracy=accuracy)
    return f"{done}; a coin does that often (binomial p = {p_value:.3g}, needs < {alpha}), so it has not shown that it learned {learned}", correct, p_value


def promotion_decision(*, kind: str, metrics: dict, project: Project) -> tuple[bool, str]:
    """The stated rule, answered in words.

    A reward model is promoted when all hold: it was trained on at least
    `reward_min_judgements` judgements; it ranks its held-out validation pairs better than a
    coin (one-sided binomial test, p < `significance_level`) and at least as well as the
    floor `reward_min_accuracy`; and on those same pairs it is not behind the active reward
    model by more than `reward_accuracy_margin`.

    A policy is promoted when it beats its reference on held-out prompts under the reward
    model (sign test, p < `significance_level`, and a positive mean reward gain) and its
    final KL to the reference is at most `ppo_max_kl` (PPO, RLOO, GRPO).

    A DPO policy (no reward model in its loop) is promoted when its implicit reward ranks
    people's held-out pairs right more often than a coin (one-sided binomial test, p <
    `significance_level`; its reference ranks every pair as a tie, so this is also "it
    beats what it replaces" on people's preferences) and its KL to the reference, measured
    on its own samples for the evaluation prompts, is at most `ppo_max_kl`.
    """
    rules = training_settings_for(project)
    alpha = rules.significance_level
    if kind == "reward":
        trained_on = metrics.get("train_judgements", metrics.get("train_examples", 0)) or 0
        if trained_on < rules.reward_min_judgements:
            return False, f"trained on only {trained_on} judgements; at least {rules.reward_min_judgements} are needed before a reward model can be trusted"
        accuracy, pairs = metrics.get("val_accuracy"), metrics.get("val_pairs") or 0
        refusal, correct, p_value = _against_a_coin(
            accuracy, pairs, alpha, ranked="it ranked {correct} of {pairs} held-out pairs correctly ({accuracy:.1%})", learned="anything",
            no_pairs="no held-out validation pairs to test it on (too few judgements to hold some out)",
        )
        if refusal:
            return False, refusal
        if accuracy < rules.reward_min_accuracy:
            return False, f"validation accuracy {accuracy:.1%} is below the floor {rules.reward_min_accuracy:.1%}"
        active_accuracy = metrics.get("active_val_accuracy")
        if active_accuracy is not None and accuracy + rules.reward_accuracy_margin < active_accuracy:
            return False, (
                f"on the same {pairs} held-out pairs it is right {accuracy:.1%} of the time and the active reward model "
                f"{active_accuracy:.1%}: more than {rules.reward_accuracy_margin:.0%} behind"
            )
        against = f"; the active model scores {active_accuracy:.1%} on the same pairs" if active_accuracy is not None else ""
        return True, f"{correct} of {pairs} held-out pairs right ({accuracy:.1%}, binomial p = {p_value:.2g}){against}"
    if kind == "policy" and metrics.get("algorithm") == "dpo":
        kl = metrics.get("kl")
        accuracy, pairs = metrics.get("dpo_val_accuracy"), metrics.get("dpo_val_pairs") or 0
        refusal, correct, p_value = _against_a_coin(
            accuracy, pairs, alpha, ranked="its implicit reward ranked {correct} of {pairs} held-out pairs as people did ({accuracy:.1%})",
            learned="people's preferences", no_pairs="no held-out judgements to test it on (too few judgements to hold some out)",
        )
        if refusal:
            return False, refusal
        if kl is None or kl > rules.ppo_max_kl:
            return False, f"its KL to the reference on its own samples, {kl if kl is None else round(kl, 3)}, is above the bound {rules.ppo_max_kl}"
        return True, f"{correct} of {pairs} held-out pairs ranked as people did ({accuracy:.1%}, binomial p = {p_value:.2g}); KL {kl:.3f} within {rules.ppo_max_kl}"
    if kind == "policy":
        kl = metrics.get("kl")
        if kl is None or kl > rules.ppo_max_kl:
            return False, f"its final KL to the reference, {kl if kl is None else round(kl, 3)}, is above the bound {rules.ppo_max_kl}"
        wins, losses, n = metrics.get("eval_wins"), metrics.get("eval_losses"), metrics.get("eval_prompts")
        if wins is None or not n:
            return False, "it was not compared with its reference on held-out prompts"
        p_value, gain = metrics.get("eval_p_value", 1.0), metrics.get("reward_gain") or 0.0
        head_to_head = f"on {n} held-out prompts the reward model preferred it {wins} times and its reference {losses} times"
        if gain <= 0:
            return False, f"{head_to_head}; its mean reward is not higher ({gain:+.3f}), so it did not improve"
        if p_value >= alpha:
            return False, f"{head_to_head} (mean reward {gain:+.3f}); that could be chance (sign test p = {p_value:.3g}, needs < {alpha})"
        return True, f"{head_to_head} (mean reward {gain:+.3f}, sign test p = {p_value:.2g}); final KL {kl:.3f} within {rules.ppo_max_kl}"
    return True, "no evaluation rule for this kind"


def new_judgements_since_active_reward(project: Project) -> int | None:
    """Human judgements that arrived after the data of the active reward model was read (None: no active model)."""
    current = active_version(project, "reward")
    if current is None:
        return None
    baseline = current.produced_by.judgements_at_start if current.produced_by else 0
    return human_judgement_count(project) - baseline


def new_judgements_since_trained(project: Project) -> int | None:
    """Human judgements that arrived after the model that learns from them read its data:
    the active reward model, or, when the project's policy algorithm is DPO (no reward
    model), the active policy if a DPO run made it. None: no such model yet."""
    if training_settings_for(project).policy_algorithm != "dpo":
        return new_judgements_since_active_reward(project)
    current = active_version(project, "policy")
    if current is None or current.produced_by is None or current.produced_by.kind != "dpo":
        return None
    return human_judgement_count(project) - current.produced_by.judgements_at_start


# --------------------------------------------------------------------------- schedule


def start_due_cycles() -> list[TrainingRun]:
    """The periodic check: a full cycle for every project with enough new judgements.

    Nothing starts for a project that already has a cycle queued or running.
    """
    started = []
    for project in Project.objects.filter(is_active=True):
        rules = training_settings_for(project)
        if not rules.auto_retrain:
            continue
        if TrainingRun.objects.filter(project=project, status__in=ACTIVE_RUN_STATUSES, parent=None).exists():
            continue
        since = new_judgements_since_trained(project)
        new = human_judgement_count(project) if since is None else since
        if new < rules.retrain_min_new_judgements:
            continue
        try:
            started.append(start_run(project=project, kind=RunKind.CYCLE, config={"trigger": "schedule", "new_judgements": new}))
        except (RunAlreadyActive, InvalidTrainingRequest) as refused:  # e.g. still too few judgements for a reward model
            log.info("no scheduled cycle for project %s: %s", project.pk, refused)
            continue
    return started
