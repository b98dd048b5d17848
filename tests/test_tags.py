"""The tag language, one tag form per case."""

from __future__ import annotations

import pytest

from kale_py.notebook import Cell
from kale_py.settings import SecretEnv, Toleration
from kale_py.tags import normalize_step_name, parse_cell_tags


def parse(*tags: str):  # type: ignore[no-untyped-def]
    return parse_cell_tags(Cell(4, "code", "x = 1", tags))


@pytest.mark.parametrize(
    ("tags", "role", "step"),
    [
        (("imports",), "imports", None),
        (("functions",), "functions", None),
        (("pipeline-parameters",), "parameters", None),
        (("parameters",), "parameters", None),
        (("pipeline-metrics",), "metrics", None),
        (("skip",), "skip", None),
        (("step:load",), "step", "load"),
        (("block:load",), "step", "load"),
        (("block:",), "continue", None),
        (("step:Load-Data_2",), "step", "Load-Data_2"),
        (("skip", "step:a"), "skip", None),
        ((), None, None),
    ],
    ids=lambda v: str(v),
)
def test_roles(tags: tuple[str, ...], role: str | None, step: str | None) -> None:
    parsed, problems = parse(*tags)
    assert (parsed.role, parsed.step, problems) == (role, step, [])


def test_settings_all_forms() -> None:
    parsed, problems = parse(
        "step:train",
        "prev:load",
        "limit:cpu:2",
        "limit:memory:4Gi",
        "request:cpu:500m",
        "limit:nvidia.com/gpu:1",
        "limit:amd.com/gpu:2",
        "image:registry.io/team/img:1.2",
        "label:team:ml",
        "annotation:example.com/owner:ana:b",
        "secret:s3-creds:key.id:AWS_KEY",
        "cache:disabled",
        "report:enabled",
        "retry:3",
        "timeout:600",
        "node:pool:gpu",
        "toleration:nvidia.com/gpu:present:NoSchedule",
    )
    assert problems == []
    s = parsed.settings
    assert parsed.prev == ("load",)
    assert dict(s.limits) == {
        "cpu": "2",
        "memory": "4Gi",
        "nvidia.com/gpu": "1",
        "amd.com/gpu": "2",
    }
    assert dict(s.requests) == {"cpu": "500m"}
    assert s.image == "registry.io/team/img:1.2"
    assert dict(s.labels) == {"team": "ml"}
    assert dict(s.annotations) == {"example.com/owner": "ana:b"}
    assert s.secrets == (SecretEnv("s3-creds", "key.id", "AWS_KEY"),)
    assert (s.cache, s.report, s.retry, s.timeout) == (False, True, 3, 600)
    assert dict(s.node_selector) == {"pool": "gpu"}
    assert s.tolerations == (Toleration("nvidia.com/gpu", "present", "NoSchedule"),)


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("limit:cpu", "limit:RESOURCE:QUANTITY"),
        ("limit:cpu:two", "limit:RESOURCE:QUANTITY"),
        ("limit:nvidia.com/gpu:0.5", "whole number of GPUs"),
        ("request:memory:lots", "request:RESOURCE:QUANTITY"),
        ("image:has space", "without spaces"),
        ("label:bad key!:v", "Kubernetes key"),
        ("secret:only-two:parts", "secret:SECRET_NAME:KEY:ENV_VAR"),
        ("secret:Upper:key:ENV", "secret:SECRET_NAME:KEY:ENV_VAR"),
        ("cache:maybe", "cache:enabled or cache:disabled"),
        ("report:off", "report:enabled or report:disabled"),
        ("retry:many", "retry:N"),
        ("timeout:0", "timeout:SECONDS"),
        ("toleration:key:value:Sometimes", "EFFECT one of"),
        ("prev:bad name", "prev:STEP"),
    ],
)
def test_malformed_tags(tag: str, fragment: str) -> None:
    _, problems = parse("step:a", tag)
    assert [(p.code, p.severity, p.cell) for p in problems] == [("NB202", "error", 4)]
    assert fragment in problems[0].message


def test_invalid_step_name() -> None:
    _, problems = parse("step:9lives")
    assert [(p.code, p.cell) for p in problems] == [("NB206", 4)]


def test_unknown_and_foreign_tags_are_warnings() -> None:
    parsed, problems = parse("step:a", "mytag", "notebook:other", "papermill-error-cell-tag")
    assert parsed.role == "step"
    assert [(p.code, p.severity) for p in problems] == [("NB201", "warning")] * 3
    assert "composition is not supported" in problems[1].message


def test_two_roles_and_two_steps() -> None:
    assert [p.code for p in parse("imports", "functions")[1]] == ["NB202"]
    assert [p.code for p in parse("step:a", "step:b")[1]] == ["NB205"]


def test_conflicting_image_tags() -> None:
    assert [p.code for p in parse("step:a", "image:a:1", "image:b:2")[1]] == ["NB208"]


def test_settings_on_imports_cell_are_ignored_with_warning() -> None:
    _, problems = parse("imports", "limit:cpu:1", "prev:x")
    assert sorted((p.code, p.severity) for p in problems) == [("NB202", "warning")] * 2


@pytest.mark.parametrize(
    ("name", "kfp"),
    [("load", "load"), ("Load_Data", "load-data"), ("_private", "private"), ("a--b", "a-b")],
)
def test_normalize_step_name(name: str, kfp: str) -> None:
    assert normalize_step_name(name) == kfp
