"""The quality endpoint's response, typed field by field, so that a client reads alpha, kappa
and the leaderboard from the OpenAPI document (#19). The statistics' own dataclasses
(labeling/quality/) give most of it: `dataclass_serializer` turns one into a serializer, so
the schema follows the code that computes the numbers. Floats are nullable: NaN (undefined,
e.g. alpha without variation) is sent as null."""

from __future__ import annotations

import dataclasses
import types
import typing

from rest_framework import serializers

from ..quality.agreement import AlphaResult
from ..quality.annotators import AnnotatorQuality, ProjectQuality, Thresholds
from ..quality.leaderboard import SourceRating

_made: dict[type, type] = {}  # one serializer per dataclass (one component in the schema)


def _field(hint, *, allow_null: bool = False):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _field(next(a for a in args if a is not type(None)), allow_null=True)
    if origin is tuple or origin is list:
        return serializers.ListField(child=_field(args[0]), allow_null=allow_null)
    if dataclasses.is_dataclass(hint):
        return dataclass_serializer(hint)(allow_null=allow_null)
    if hint is bool:
        return serializers.BooleanField(allow_null=allow_null)
    if hint is int or hint is object:  # `object`: an annotator's id
        return serializers.IntegerField(allow_null=allow_null)
    if hint is float:
        return serializers.FloatField(allow_null=True)  # NaN is sent as null
    if hint is str:
        return serializers.CharField(allow_null=allow_null)
    raise TypeError(f"no serializer field for {hint!r}")


def dataclass_serializer(cls: type, *, extra: dict | None = None, name: str | None = None) -> type:
    """A read-only serializer with one field per dataclass field (and `extra` ones)."""
    name = name or f"{cls.__name__}Output"
    if cls in _made:
        return _made[cls]
    hints = typing.get_type_hints(cls)
    attrs = {f.name: _field(hints[f.name]) for f in dataclasses.fields(cls)}
    attrs.update(extra or {})
    attrs["Meta"] = type("Meta", (), {"ref_name": name})
    made = type(name, (serializers.Serializer,), attrs)
    _made[cls] = made
    return made


Alpha = dataclass_serializer(AlphaResult, name="AlphaOutput")


class AlphaSet(serializers.Serializer):
    nominal = Alpha(help_text="A, B, tie, both bad as four categories")
    ordinal_strength = Alpha(help_text="the 8-point scale from 'A much better' to 'B much better'")
    ordinal_rankings = Alpha(help_text="the rank each reply got in ranking judgements")


class WeekAgreement(serializers.Serializer):
    week = serializers.DateField(help_text="the Monday of the week")
    judgements = serializers.IntegerField()
    majority_rate = serializers.FloatField(allow_null=True, help_text="agreement with the majority of the others")
    mean_kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa of every pair, weighted by shared tasks")


class WeekAlpha(Alpha):
    week = serializers.DateField()

    class Meta:
        ref_name = "WeekAlphaOutput"


class KappaPair(serializers.Serializer):
    annotator_a = serializers.CharField()
    annotator_b = serializers.CharField()
    shared = serializers.IntegerField()
    observed = serializers.FloatField(allow_null=True)
    kappa = serializers.FloatField(allow_null=True, help_text="null when chance agreement is 1")


class MajorityRow(serializers.Serializer):
    annotator = serializers.CharField()
    compared = serializers.IntegerField()
    agreed = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True)


class AgreementOutput(serializers.Serializer):
    pairwise_judgements = serializers.IntegerField()
    ranking_judgement_replies = serializers.IntegerField()
    alpha = AlphaSet(help_text="Krippendorff's alpha with a bootstrap interval")
    by_week = WeekAgreement(many=True)
    alpha_by_week = WeekAlpha(many=True)
    kappa_pairs = KappaPair(many=True)
    majority_agreement = MajorityRow(many=True)


AnnotatorRow = dataclass_serializer(AnnotatorQuality, name="AnnotatorQualityOutput", extra={
    "username": serializers.CharField(),
    "paused": serializers.BooleanField(),
    "pause_reason": serializers.CharField(allow_null=True),
})


class AnnotatorsOutput(serializers.Serializer):
    annotators = AnnotatorRow(many=True)
    project = dataclass_serializer(ProjectQuality, name="ProjectQualityOutput")()
    thresholds = dataclass_serializer(Thresholds, name="ThresholdsOutput")()
    min_time_ms = serializers.FloatField(allow_null=True)


class LeaderboardOutput(serializers.Serializer):
    sources = dataclass_serializer(SourceRating, name="SourceRatingOutput")(many=True, help_text="best first (Bradley-Terry)")
    names = serializers.ListField(child=serializers.CharField(), help_text="the sources, in the matrices' order")
    order = serializers.ListField(child=serializers.IntegerField(), help_text="indexes into names, best first")
    win_matrix = serializers.ListField(child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
                                       help_text="[i][j]: the share of i's comparisons with j that i won (null: none)")
    count_matrix = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    comparisons = serializers.IntegerField()
    connected = serializers.BooleanField(help_text="false: some sources were never compared, even indirectly")
    level = serializers.FloatField(help_text="the intervals' confidence level")
    ties = serializers.CharField(help_text="how ties count")


class RewardDay(serializers.Serializer):
    day = serializers.DateField()
    pairs = serializers.IntegerField()
    rate = serializers.FloatField()
    low = serializers.FloatField()
    high = serializers.FloatField()


class RewardVersionAgreement(serializers.Serializer):
    version = serializers.CharField()
    status = serializers.CharField()
    number = serializers.IntegerField()
    promoted_at = serializers.DateTimeField(allow_null=True)
    pairs = serializers.IntegerField()
    rate = serializers.FloatField(help_text="the share of people's preferences the reward model orders the same way")
    low = serializers.FloatField()
    high = serializers.FloatField()
    days = RewardDay(many=True)


class RewardVsPeopleOutput(serializers.Serializer):
    versions = RewardVersionAgreement(many=True)


class QualityOutput(serializers.Serializer):
    project = serializers.IntegerField()
    agreement = AgreementOutput()
    annotators = AnnotatorsOutput()
    leaderboard = LeaderboardOutput()
    reward_vs_people = RewardVsPeopleOutput()
