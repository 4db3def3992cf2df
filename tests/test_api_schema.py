"""Typed API responses (#19, part 6): every response in the OpenAPI document names its fields
and their types, and real answers match it exactly (no missing and no undocumented keys).
Schemathesis (test_schema_fuzz.py) validates every fuzzed answer against the same document;
here the quality endpoint's answer is checked on a project with every kind of data in it
(judgements from several reply sources, rankings, gold, a reward model's scores)."""

import copy
import json

import jsonschema
import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from labeling.models import ComparisonTask, Project, Response
from labeling.services import create_annotator, set_gold

from .conftest import import_items
from .test_quality_data import judge

# Maps whose keys depend on the run's kind (a run's config as given, metric names): typed as
# objects, their values free. Everything else in a response has named, typed fields.
FREE_FORM = {("RunOutput", "config"), ("RunOutput", "metrics"), ("StageOutput", "metrics"), ("VersionOutput", "metrics")}


@pytest.fixture(scope="module")
def schema():
    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


def response_components(schema) -> set[str]:
    """The components a response refers to, directly or through other components."""
    seen, todo = set(), []
    for operations in schema["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                for content in response.get("content", {}).values():
                    todo.append(content.get("schema", {}))
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref.split("/")[-1] not in seen:
                name = ref.split("/")[-1]
                seen.add(name)
                todo.append(schema["components"]["schemas"][name])
            todo.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            todo.extend(node)
    return seen


def untyped(component: str, node: dict, path: str) -> list[str]:
    problems = []
    if not any(key in node for key in ("type", "$ref", "oneOf", "allOf", "anyOf", "enum")):
        return [f"{component}{path}: no type"]
    loose = node.get("type") == "object" and not node.get("properties") and node.get("additionalProperties") in (None, {}, True)
    if loose and (component, path.lstrip(".")) not in FREE_FORM:
        problems.append(f"{component}{path}: an object without named fields")
    for name, sub in (node.get("properties") or {}).items():
        problems += untyped(component, sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += untyped(component, node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"]:
        problems += untyped(component, node["additionalProperties"], f"{path}{{}}")
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key) or []:
            problems += untyped(component, sub, path)
    return problems


def test_every_response_names_its_fields_and_their_types(schema):
    problems = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code != "204" and "content" not in response:
                    problems.append(f"{method.upper()} {path} {code}: no body documented")
                for content in response.get("content", {}).values():
                    body = content.get("schema")
                    if body is None or ("$ref" not in body and body.get("type") not in ("string", "array")):
                        problems.append(f"{method.upper()} {path} {code}: the body is not a named schema ({body})")
    components = response_components(schema)
    for name in sorted(components):
        problems += untyped(name, schema["components"]["schemas"][name], "")
    assert {"QualityOutput", "ImportJobOutput", "ImportReportOutput", "SkipOutput", "AlphaOutput", "SourceRatingOutput"} <= components
    assert problems == []


def strict(node, components):
    """The OpenAPI 3.0 schema as JSON Schema: nullable as a null type, $refs inlined, and no
    key that the schema does not name."""
    if isinstance(node, list):
        return [strict(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return strict(components[node["$ref"].split("/")[-1]], components)
    out = {key: strict(value, components) for key, value in node.items() if key not in ("nullable", "readOnly", "description")}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def validate(schema, component: str, body) -> None:
    components = copy.deepcopy(schema["components"]["schemas"])
    jsonschema.validate(body, strict(components[component], components), format_checker=jsonschema.FormatChecker())


def test_the_quality_answer_on_a_full_project_matches_its_schema(db, schema, admin_user, tmp_path):
    from training.models import ModelVersion, ReplyScore

    project = Project.objects.create(name="typed quality", overlap_k=3, gold_rate=0, max_responses=3)
    items = [
        {"prompt": f"question {i}", "responses": [{"text": f"careful answer {i}", "model": "careful"},
                                                 {"text": f"quick answer {i}", "model": "quick"}]}
        for i in range(8)
    ] + [{"prompt": f"rank {i}", "responses": [{"text": f"r{i} a", "model": "careful"}, {"text": f"r{i} b", "model": "quick"},
                                                {"text": f"r{i} c", "model": "sloppy"}]} for i in range(2)]
    import_items(project, items)
    tasks = list(ComparisonTask.objects.filter(project=project).order_by("pk"))
    gold = tasks[0]
    first_reply = gold.task_responses.get(position=0).response_id
    set_gold(task_id=gold.pk, response_id=first_reply)
    people = [create_annotator(username=f"typed{i}", password="typed-pass-8k2m") for i in range(3)]
    for t, task in enumerate(tasks):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for p, person in enumerate(people):
            if len(ids) == 3:
                judge(task, person, ids, ranks=[1, 2, 3] if p else [2, 1, 3])
            elif (t + p) % 4 == 3:
                judge(task, person, ids[::-1], choice="tie")
            else:
                judge(task, person, ids if p % 2 else ids[::-1], winner=(t * p) % 2)
    version = ModelVersion.objects.create(project=project, kind="reward", number=1, artifact_path=str(tmp_path), status="active")
    ReplyScore.objects.bulk_create(
        ReplyScore(response=reply, version=version, reward=float(len(reply.text) % 5)) for reply in Response.objects.filter(prompt__project=project)
    )
    api = APIClient()
    api.force_authenticate(admin_user)
    body = api.get(f"/api/v1/projects/{project.pk}/quality/").json()
    assert {row["name"] for row in body["leaderboard"]["sources"]} == {"careful", "quick", "sloppy"}
    assert body["reward_vs_people"]["versions"][0]["pairs"] > 0 and body["annotators"]["project"]["gold"]["n"] == 3
    assert body["agreement"]["alpha"]["nominal"]["alpha"] is not None and body["agreement"]["kappa_pairs"]
    validate(schema, "QualityOutput", body)
    # the check can fail: an undocumented key, a missing one or a wrong type is refused
    for broken in ({**body, "extra": 1}, {k: v for k, v in body.items() if k != "leaderboard"},
                   {**body, "agreement": {**body["agreement"], "pairwise_judgements": "many"}}):
        with pytest.raises(jsonschema.ValidationError):
            validate(schema, "QualityOutput", broken)
    empty = Project.objects.create(name="nothing judged", overlap_k=1, gold_rate=0)
    validate(schema, "QualityOutput", api.get(f"/api/v1/projects/{empty.pk}/quality/").json())


def test_import_answers_match_their_schemas(db, schema, admin_user, project):
    import io

    api = APIClient()
    api.force_authenticate(admin_user)

    def post(background):
        data = io.BytesIO(b'{"prompt": "p", "responses": ["a", "b"]}\n')
        data.name = "one.jsonl"
        return api.post(f"/api/v1/projects/{project.pk}/import/", {"file": data, "format": "jsonl", "background": background}, format="multipart")

    validate(schema, "ImportReportOutput", post("false").json())
    job = post("true")
    validate(schema, "ImportJobOutput", job.json())
    from .conftest import run_queued_imports

    run_queued_imports()
    validate(schema, "ImportJobOutput", api.get(job["Location"]).json())
    validate(schema, "PaginatedImportJobOutputList", api.get("/api/v1/imports/").json())
