"""People: annotators and admins, passwords, API tokens, project assignments.

Every change is a POST that redirects (post / redirect / get) with a message; a form that
does not validate is shown again with the reason next to its field. The rules (who may
change whom, what deactivating ends) live in labeling.services.
"""

from __future__ import annotations

from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.models import Group
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q
from django.http import HttpResponseNotAllowed
from django.utils.cache import add_never_cache_headers
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone

from .. import services
from ..exceptions import LabelingError
from ..models import Assignment, AssignmentState, Project
from .common import labeling_admin_required

PER_PAGE = 100
ROLES = [("annotator", "Annotator"), ("admin", "Admin")]


def is_admin_expression() -> Q:
    """What services.is_labeling_admin tests, as a filter (one query for a whole list)."""
    in_group = Group.objects.filter(name=services.ADMINS_GROUP, user=OuterRef("pk"))
    return Q(is_superuser=True) | Q(is_staff=True) | Exists(in_group)


# --------------------------------------------------------------------------- forms


class PasswordField(forms.CharField):
    widget = forms.PasswordInput(attrs={"autocomplete": "new-password"})

    def __init__(self, **kwargs):
        kwargs.setdefault("strip", False)
        kwargs.setdefault("max_length", 128)
        super().__init__(**kwargs)


class NewPersonForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only; how they sign in.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "autofocus": True}),
    )
    email = forms.EmailField(required=False, help_text="Optional.")
    password = PasswordField(help_text="At least 8 characters, not a common password, not like the username.")
    is_admin = forms.BooleanField(
        required=False, label="Admin", help_text="Admins manage projects and people and see every project."
    )

    def clean_username(self):
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise ValidationError("a user with this username already exists")
        return username


class PasswordForm(forms.Form):
    password = PasswordField(label="New password")


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLES, widget=forms.RadioSelect)


class ProjectsForm(forms.Form):
    projects = forms.ModelMultipleChoiceField(
        queryset=Project.objects.order_by("-is_active", "name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Assigned projects",
    )


def add_service_errors(form: forms.Form, error: ValidationError, field: str) -> None:
    """A ValidationError from a service onto the form: on its own field when it names one
    the form has, else on `field` (password validators name none)."""
    if hasattr(error, "error_dict"):
        for name, errors in error.error_dict.items():
            form.add_error(name if name in form.fields else field, errors)
    else:
        form.add_error(field, error)


# --------------------------------------------------------------------------- list and create


@labeling_admin_required
def people_list(request):
    """Everyone who can sign in (and, on request, those deactivated), with their role,
    judgements, last sign-in and assigned projects."""
    show_inactive = request.GET.get("inactive") == "1"
    users = get_user_model().objects.all()
    inactive = users.filter(is_active=False).count()
    if not show_inactive:
        users = users.filter(is_active=True)
    users = (
        users.annotate(is_admin=is_admin_expression(), judgement_count=Count("judgements"))
        .prefetch_related(Prefetch("assigned_projects", queryset=Project.objects.order_by("name")))
        .order_by("username")
    )
    page = Paginator(users, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/people.html",
        {"page": page, "show_inactive": show_inactive, "inactive": inactive},
    )


@labeling_admin_required
def person_create(request):
    form = NewPersonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = services.create_annotator(
                username=data["username"],
                password=data["password"],
                email=data["email"],
                is_admin=data["is_admin"],
                only_new=True,
            )
        except ValidationError as error:
            add_service_errors(form, error, "password")
        else:
            if data["is_admin"]:
                messages.success(request, f"Added admin “{user.username}”.")
            else:
                messages.success(request, f"Added annotator “{user.username}”. Assign them to projects below.")
            return redirect("console:person", user_id=user.pk)
    return render(request, "console/people_new.html", {"form": form})


# --------------------------------------------------------------------------- one person


def _person(user_id: int):
    return get_object_or_404(
        get_user_model().objects.annotate(is_admin=is_admin_expression(), judgement_count=Count("judgements")),
        pk=user_id,
    )


def _render_person(request, person, *, password_form=None, role_form=None, projects_form=None):
    refusal = services.account_change_refusal(user=person, by=request.user)
    assigned = list(person.assigned_projects.order_by("name"))
    open_leases = Assignment.objects.filter(annotator=person, state=AssignmentState.LEASED, expires_at__gt=timezone.now())
    context = {
        "person": person,
        "is_self": person.pk == request.user.pk,
        "refusal": refusal,
        "open_leases": open_leases.count(),
        "assigned": assigned,
        "password_form": password_form or PasswordForm(),
        "role_form": role_form or RoleForm(initial={"role": "admin" if person.is_admin else "annotator"}),
        "projects_form": projects_form or ProjectsForm(initial={"projects": assigned}),
        "token": None if refusal else services.api_token(person),
    }
    response = render(request, "console/people_detail.html", context)
    add_never_cache_headers(response)  # it shows the person's API token: no copy in any cache
    return response


@labeling_admin_required
def person_detail(request, user_id: int):
    return _render_person(request, _person(user_id))


def _post_only(view):
    """A change: POST only (405 otherwise); refused for an account the admin may not change."""

    @wraps(view)
    def wrapper(request, user_id: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        person = _person(user_id)
        refusal = services.account_change_refusal(user=person, by=request.user)
        if refusal:
            return render(request, "labeling/error.html", {"message": f"Not changed: {refusal}."}, status=403)
        return view(request, person)

    return labeling_admin_required(wrapper)


@_post_only
def person_password(request, person):
    form = PasswordForm(request.POST)
    if form.is_valid():
        try:
            services.set_password(user=person, password=form.cleaned_data["password"], by=request.user)
        except ValidationError as error:
            add_service_errors(form, error, "password")
        else:
            if person.pk == request.user.pk:
                update_session_auth_hash(request, person)  # keep this session; the others end
            messages.success(request, f"Password of “{person.username}” changed; their other sessions ended.")
            return redirect("console:person", user_id=person.pk)
    return _render_person(request, person, password_form=form)


@_post_only
def person_token(request, person):
    """Rotate the API token: the old key stops working at once."""
    services.rotate_token(user=person, by=request.user)
    messages.success(request, f"New API token for “{person.username}”; the old one no longer works.")
    return redirect("console:person", user_id=person.pk)


@_post_only
def person_deactivate(request, person):
    try:
        ended = services.set_active(user=person, active=False, by=request.user)
    except LabelingError as error:
        messages.error(request, f"Not deactivated: {error.message}.")
    else:
        leases = f" {ended} open task{'s' if ended != 1 else ''} went back to the pool." if ended else ""
        messages.success(request, f"“{person.username}” is deactivated: they can no longer sign in or use the API.{leases}")
    return redirect("console:person", user_id=person.pk)


@_post_only
def person_reactivate(request, person):
    services.set_active(user=person, active=True, by=request.user)
    messages.success(request, f"“{person.username}” is active again and can sign in.")
    return redirect("console:person", user_id=person.pk)


@_post_only
def person_role(request, person):
    form = RoleForm(request.POST)
    if form.is_valid():
        try:
            services.set_role(user=person, is_admin=form.cleaned_data["role"] == "admin", by=request.user)
        except LabelingError as error:
            form.add_error("role", error.message)
        else:
            role = dict(ROLES)[form.cleaned_data["role"]].lower()
            messages.success(request, f"“{person.username}” is now an {role}.")
            return redirect("console:person", user_id=person.pk)
    return _render_person(request, person, role_form=form)


@_post_only
def person_projects(request, person):
    form = ProjectsForm(request.POST)
    if form.is_valid():
        projects = list(form.cleaned_data["projects"])
        services.set_assigned_projects(user=person, projects=projects, by=request.user)
        names = ", ".join(f"“{p.name}”" for p in projects) or "no project"
        messages.success(request, f"“{person.username}” is assigned to {names}.")
        return redirect("console:person", user_id=person.pk)
    return _render_person(request, person, projects_form=form)


urlpatterns: list = [
    path("people/", people_list, name="people"),
    path("people/new/", person_create, name="person_create"),
    path("people/<int:user_id>/", person_detail, name="person"),
    path("people/<int:user_id>/password/", person_password, name="person_password"),
    path("people/<int:user_id>/token/", person_token, name="person_token"),
    path("people/<int:user_id>/deactivate/", person_deactivate, name="person_deactivate"),
    path("people/<int:user_id>/reactivate/", person_reactivate, name="person_reactivate"),
    path("people/<int:user_id>/role/", person_role, name="person_role"),
    path("people/<int:user_id>/projects/", person_projects, name="person_projects"),
]
