"""Django admin for the labeling models. Judgements are read-only: they are evidence."""

from django.contrib import admin

from .models import Assignment, ComparisonTask, Judgement, JudgementRevision, Project, Prompt, Response, TaskResponse


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "overlap_k", "max_responses", "gold_rate", "lease_seconds", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "__str__", "source_format", "source", "created_at"]
    list_filter = ["project", "source_format"]
    search_fields = ["messages", "source"]
    readonly_fields = ["content_hash", "created_at"]


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "__str__", "origin", "created_at"]
    list_filter = ["origin"]
    search_fields = ["text", "origin"]
    readonly_fields = ["text_hash", "created_at"]
    raw_id_fields = ["prompt"]


class TaskResponseInline(admin.TabularInline):
    model = TaskResponse
    raw_id_fields = ["response"]
    extra = 0


@admin.register(ComparisonTask)
class ComparisonTaskAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "prompt", "status", "priority", "is_gold", "judgement_count", "created_at"]
    list_filter = ["project", "status", "is_gold"]
    search_fields = ["prompt__messages"]
    raw_id_fields = ["prompt", "gold_response"]
    readonly_fields = ["response_set_hash", "judgement_count", "created_at"]
    inlines = [TaskResponseInline]
    actions = ["archive", "reopen"]

    @admin.action(description="Archive selected tasks (no longer served)")
    def archive(self, request, queryset):
        queryset.update(status="archived")

    @admin.action(description="Reopen selected tasks")
    def reopen(self, request, queryset):
        queryset.update(status="open")


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "state", "leased_at", "expires_at", "completed_at"]
    list_filter = ["state", "task__project"]
    search_fields = ["annotator__username"]
    raw_id_fields = ["task", "annotator"]


@admin.register(Judgement)
class JudgementAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "choice", "strength", "source", "gold_correct", "time_spent_ms", "created_at"]
    list_filter = ["task__project", "choice", "strength", "source", "gold_correct", "created_at"]
    search_fields = ["annotator__username", "rationale"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(JudgementRevision)
class JudgementRevisionAdmin(admin.ModelAdmin):
    """Earlier versions of revised judgements: history, read-only."""

    list_display = ["judgement", "number", "choice", "strength", "made_at", "replaced_at"]
    list_filter = ["judgement__task__project", "choice"]
    raw_id_fields = ["judgement"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
