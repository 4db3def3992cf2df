"""Admin for model versions and training runs, with the same actions as the dashboard."""

from django.contrib import admin, messages

from labeling.exceptions import LabelingError

from . import services
from .models import ModelVersion, ProjectTrainingSettings, RunKind, TrainingRun


def _report(modeladmin, request, action, items, describe=lambda result: "done"):
    for item in items:
        try:
            result = action(item)
        except LabelingError as error:
            modeladmin.message_user(request, f"{item}: {error.message}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{item}: {describe(result)}")


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "progress", "parent", "requested_by", "created_at", "finished_at"]
    list_filter = ["project", "kind", "status"]
    readonly_fields = [f.name for f in TrainingRun._meta.fields]
    actions = ["cancel", "start_cycle_again"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Cancel selected runs")
    def cancel(self, request, queryset):
        _report(self, request, lambda run: services.cancel_run(run=run), queryset)

    @admin.action(description="Start a new run of the same kind")
    def start_cycle_again(self, request, queryset):
        _report(self, request, lambda run: services.start_run(project=run.project, kind=run.kind, config=run.config, requested_by=request.user), queryset)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "project", "status", "parent", "produced_by", "created_at", "promoted_at", "promotion_note"]
    list_filter = ["project", "kind", "status"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ["promote", "promote_overriding_the_gate", "roll_back"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Promote selected versions (not one the promotion gate refused)")
    def promote(self, request, queryset):
        _report(self, request, lambda v: services.promote_version(version=v, by=request.user), queryset)

    @admin.action(description="Promote selected versions, overriding the promotion gate (recorded with your name)")
    def promote_overriding_the_gate(self, request, queryset):
        _report(self, request, lambda v: services.promote_version(version=v, by=request.user, override=True), queryset)

    @admin.action(description="Roll back to the version active before (per project and kind)")
    def roll_back(self, request, queryset):
        pairs = {(v.project, v.kind) for v in queryset}
        _report(
            self, request, lambda pair: services.roll_back(project=pair[0], kind=pair[1]), pairs,
            describe=lambda active: f"rolled back; now active: {active}" if active else "rolled back; now the built-in default policy",
        )


@admin.register(ProjectTrainingSettings)
class ProjectTrainingSettingsAdmin(admin.ModelAdmin):
    list_display = ["project", "auto_retrain", "retrain_min_new_judgements", "generate_prompts", "generate_replies_per_prompt", "ppo_max_kl"]
    actions = ["start_cycle"]

    @admin.action(description="Start a full cycle now")
    def start_cycle(self, request, queryset):
        _report(self, request, lambda s: services.start_run(project=s.project, kind=RunKind.CYCLE, requested_by=request.user), queryset)
