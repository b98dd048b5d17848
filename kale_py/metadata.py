"""Notebook-level settings from ``metadata.kubeflow_notebook`` (Kale's key), read leniently.

Kale rejects any key it does not know, which breaks notebooks written by its older UIs.
Here unknown keys are a warning, ``docker_image`` is read as ``base_image`` with a
warning, and only values of the wrong type are errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from .diagnostics import Diagnostic, error, warning
from .settings import NotebookSettings, ServingSettings, StepSettings, Volume
from .tags import parse_settings_tags

METADATA_KEY = "kubeflow_notebook"

# Kale fields that are read (or deliberately ignored) without a warning.
_KALE_KEYS = {
    "pipeline_name",
    "experiment_name",
    "pipeline_description",
    "base_image",
    "docker_image",
    "volumes",
    "enable_caching",
    "steps_defaults",
    "kfp_host",
    "namespace",
    "experiment",
    "katib_run",
    "katib_metadata",
    "abs_working_dir",
    "marshal_path",
    "storage_class_name",
    "volume_access_mode",
    "timeout",
    "security_context",
    "output_path",
    "notebook_path",
    "snapshot_volumes",
    "autosnapshot",
    "install_packages",
    "storage_limit",  # read by kale_py.storage: the local runs' storage limit
    "local_isolation",
    "step_image",
    "keep_volumes",
    "image_pull_secrets",
    "poddefaults",
    "serving",
}
_VOLUME_TYPES = ("pvc", "new_pvc", "pv", "clone")


def read_settings(metadata: Mapping[str, Any]) -> tuple[NotebookSettings, list[Diagnostic]]:
    """``NotebookSettings`` from a notebook's metadata, with the problems found."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return NotebookSettings(), []
    if not isinstance(raw, dict):
        return NotebookSettings(), [error("NB004", f"metadata.{METADATA_KEY} must be an object")]
    problems: list[Diagnostic] = []
    for key in raw:
        if key not in _KALE_KEYS:
            problems.append(
                warning("NB003", f"unknown key {key!r} in metadata.{METADATA_KEY}; ignored")
            )

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            problems.append(error("NB004", f"metadata.{METADATA_KEY}.{key} must be a string"))
            return None
        return value

    base_image = text("base_image")
    docker_image = text("docker_image")
    if docker_image is not None:
        problems.append(
            warning(
                "NB005",
                f"metadata.{METADATA_KEY}.docker_image is the old name of "
                "base_image; it is read as base_image",
            )
        )
        base_image = base_image or docker_image
    experiment = text("experiment_name")
    if experiment is None and isinstance(raw.get("experiment"), dict):
        name = raw["experiment"].get("name")
        experiment = name if isinstance(name, str) and name else None
    caching = _flag(raw, "enable_caching", True, problems)
    install = _flag(raw, "install_packages", False, problems)
    defaults = _steps_defaults(raw.get("steps_defaults"), problems)
    defaults = _with_names(defaults, raw, problems)
    settings = NotebookSettings(
        pipeline_name=text("pipeline_name"),
        experiment_name=experiment,
        pipeline_description=text("pipeline_description"),
        base_image=base_image,
        volumes=_volumes(raw.get("volumes"), problems),
        enable_caching=caching,
        steps_defaults=defaults,
        kfp_host=text("kfp_host"),
        namespace=text("namespace"),
        install_packages=install,
        local_isolation=_isolation(raw.get("local_isolation"), problems),
        step_image=text("step_image"),
        keep_volumes=_flag(raw, "keep_volumes", False, problems),
        serving=_serving(raw.get("serving"), problems),
        extra=tuple((k, v) for k, v in raw.items() if k not in _KALE_KEYS),
    )
    return settings, problems


_SERVING_TEXT = ("name", "image", "service_account", "s3_endpoint")


def _serving(value: Any, problems: list[Diagnostic]) -> ServingSettings:
    """``serving``: {name, image, service_account, s3_endpoint, timeout, predictor}."""
    where = f"metadata.{METADATA_KEY}.serving"
    if value in (None, ""):
        return ServingSettings()
    if not isinstance(value, dict):
        problems.append(error("NB004", f"{where} must be an object"))
        return ServingSettings()
    texts: dict[str, str] = {}
    for key, item in value.items():
        if key in _SERVING_TEXT:
            if isinstance(item, str) and item:
                texts[key] = item
            elif item not in (None, ""):
                problems.append(error("NB004", f"{where}.{key} must be a string"))
        elif key not in ("timeout", "predictor"):
            problems.append(warning("NB003", f"unknown key {key!r} in {where}; ignored"))
    timeout = value.get("timeout", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        problems.append(error("NB004", f"{where}.timeout must be a positive number of seconds"))
        timeout = 600
    predictor = value.get("predictor", "auto")
    if predictor not in ("auto", "python"):
        problems.append(error("NB004", f"{where}.predictor must be auto or python"))
        predictor = "auto"
    return ServingSettings(timeout=timeout, predictor="python" if predictor == "python"
                           else "auto", **texts)


def _isolation(value: Any, problems: list[Diagnostic]) -> Literal["auto", "fork", "spawn"]:
    if value in (None, "", "auto"):
        return "auto"
    if value in ("fork", "spawn"):
        return "fork" if value == "fork" else "spawn"
    problems.append(
        error("NB004", f"metadata.{METADATA_KEY}.local_isolation must be auto, fork or spawn")
    )
    return "auto"


def _flag(raw: dict[str, Any], key: str, default: bool, problems: list[Diagnostic]) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.append(error("NB004", f"metadata.{METADATA_KEY}.{key} must be true or false"))
        return default
    return value


def _steps_defaults(value: Any, problems: list[Diagnostic]) -> StepSettings:
    if value in (None, ""):
        return StepSettings()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        problems.append(
            error("NB004", f"metadata.{METADATA_KEY}.steps_defaults must be a list of tags")
        )
        return StepSettings()
    settings, found = parse_settings_tags(value, f"metadata.{METADATA_KEY}.steps_defaults")
    problems.extend(found)
    return settings


def _with_names(
    defaults: StepSettings, raw: dict[str, Any], problems: list[Diagnostic]
) -> StepSettings:
    """``image_pull_secrets`` and ``poddefaults`` (lists of names) as step defaults."""
    found: dict[str, tuple[str, ...]] = {}
    keys = (("image_pull_secrets", "pull_secrets"), ("poddefaults", "poddefaults"))
    for key, field_name in keys:
        value = raw.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            where = f"metadata.{METADATA_KEY}.{key}"
            problems.append(error("NB004", f"{where} must be a list of names"))
            continue
        found[field_name] = tuple(value)
    if not found:
        return defaults
    return replace(
        defaults,
        pull_secrets=tuple(dict.fromkeys(defaults.pull_secrets + found.get("pull_secrets", ()))),
        poddefaults=tuple(dict.fromkeys(defaults.poddefaults + found.get("poddefaults", ()))),
    )


def _volumes(value: Any, problems: list[Diagnostic]) -> tuple[Volume, ...]:
    if value in (None, ""):
        return ()
    where = f"metadata.{METADATA_KEY}.volumes"
    if not isinstance(value, list):
        problems.append(error("NB004", f"{where} must be a list"))
        return ()
    volumes = []
    for i, item in enumerate(value, start=1):
        volume = _volume(item, f"{where}[{i}]", problems)
        if volume is not None:
            volumes.append(volume)
    return tuple(volumes)


def _volume(item: Any, where: str, problems: list[Diagnostic]) -> Volume | None:
    if not isinstance(item, dict):
        problems.append(error("NB004", f"{where} must be an object with name and mount_point"))
        return None
    name, mount = item.get("name"), item.get("mount_point")
    kind = item.get("type") or "pvc"
    if (
        not isinstance(name, str)
        or not name
        or not isinstance(mount, str)
        or not mount.startswith("/")
    ):
        problems.append(error("NB004", f"{where} needs a 'name' and an absolute 'mount_point'"))
        return None
    if kind not in _VOLUME_TYPES:
        problems.append(error("NB004", f"{where}.type must be one of {', '.join(_VOLUME_TYPES)}"))
        return None
    size = item.get("size")
    size_text = f"{size}{item.get('size_type') or ''}" if size not in (None, "") else None
    annotations = item.get("annotations") or []
    pairs = tuple(
        (a["key"], str(a.get("value", "")))
        for a in annotations
        if isinstance(a, dict) and isinstance(a.get("key"), str) and a["key"]
    )
    return Volume(
        name=name,
        mount_point=mount,
        type=kind,
        size=size_text,
        storage_class=item.get("storage_class_name") or None,
        access_mode=item.get("volume_access_mode") or None,
        snapshot=bool(item.get("snapshot")),
        annotations=pairs,
        expose_as_env_var=bool(item.get("expose_as_env_var")),
        keep=bool(item.get("keep")),
    )
