"""Per-step and notebook-level pipeline settings (the model, no parsing here).

Per-step settings come from cell tags (``limit:cpu:2``, ``image:...``); notebook settings
from ``metadata.kubeflow_notebook``. Both are plain frozen data that every backend reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable filled from a Kubernetes secret, by reference."""

    secret: str
    key: str
    env: str


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass(frozen=True)
class StepSettings:
    """Everything a step can be configured with beyond its code.

    ``None`` means "not set": the notebook default (or the backend's) applies.
    Resource maps keep the user's resource names (``cpu``, ``memory``, ``nvidia.com/gpu``).
    """

    limits: tuple[tuple[str, str], ...] = ()
    requests: tuple[tuple[str, str], ...] = ()
    image: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretEnv, ...] = ()
    cache: bool | None = None
    report: bool | None = None
    retry: int | None = None
    timeout: int | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    #: Kubernetes secrets the step pod pulls its image with (``pull-secret:NAME``)
    pull_secrets: tuple[str, ...] = ()
    #: Kubeflow PodDefaults applied to the step pod (``poddefault:NAME``)
    poddefaults: tuple[str, ...] = ()

    def merged_over(self, defaults: StepSettings) -> StepSettings:
        """These settings, with anything unset taken from ``defaults``.

        Keyed entries (limits, labels, ...) merge by key, the step's own value winning.
        """

        def keyed(
            mine: tuple[tuple[str, str], ...], base: tuple[tuple[str, str], ...]
        ) -> tuple[tuple[str, str], ...]:
            merged = dict(base)
            merged.update(mine)
            return tuple(merged.items())

        secrets = {s.env: s for s in defaults.secrets}
        secrets.update({s.env: s for s in self.secrets})
        tolerations = {
            (t.key, t.value, t.effect): t for t in defaults.tolerations + self.tolerations
        }
        return replace(
            self,
            limits=keyed(self.limits, defaults.limits),
            requests=keyed(self.requests, defaults.requests),
            image=self.image if self.image is not None else defaults.image,
            labels=keyed(self.labels, defaults.labels),
            annotations=keyed(self.annotations, defaults.annotations),
            secrets=tuple(secrets.values()),
            cache=self.cache if self.cache is not None else defaults.cache,
            report=self.report if self.report is not None else defaults.report,
            retry=self.retry if self.retry is not None else defaults.retry,
            timeout=self.timeout if self.timeout is not None else defaults.timeout,
            node_selector=keyed(self.node_selector, defaults.node_selector),
            tolerations=tuple(tolerations.values()),
            pull_secrets=tuple(dict.fromkeys(defaults.pull_secrets + self.pull_secrets)),
            poddefaults=tuple(dict.fromkeys(defaults.poddefaults + self.poddefaults)),
        )


@dataclass(frozen=True)
class Volume:
    """A volume of the notebook, mounted into every step at the same path.

    ``type`` follows Kale: ``pvc`` (an existing claim), ``new_pvc``, ``pv``, ``clone``
    (a snapshot of a notebook volume restored into a new claim).
    """

    name: str
    mount_point: str
    type: str = "pvc"
    size: str | None = None
    storage_class: str | None = None
    access_mode: str | None = None
    snapshot: bool = False
    annotations: tuple[tuple[str, str], ...] = ()
    expose_as_env_var: bool = False
    #: a claim or snapshot made for the run is kept after it (deleted by default)
    keep: bool = False


@dataclass(frozen=True)
class ServingSettings:
    """``serving`` in the notebook metadata: how a ``serve:VAR`` model is served on the cluster."""

    #: the InferenceService's name (default: the variable's, lowercase, ``_`` as ``-``)
    name: str | None = None
    #: the image of kale_py's Python predictor (default: the image of the model's step)
    image: str | None = None
    #: the predictor's service account, which must be able to read the model's storage
    service_account: str | None = None
    #: KFP's S3 endpoint, for the service account the deploy task makes (host:port)
    s3_endpoint: str | None = None
    #: seconds the deploy task waits for the InferenceService to be ready
    timeout: int = 600
    #: auto: a built-in KServe runtime where one fits; python: always kale_py's predictor
    predictor: Literal["auto", "python"] = "auto"


@dataclass(frozen=True)
class NotebookSettings:
    """``metadata.kubeflow_notebook``, read leniently (unknown keys are kept in ``extra``)."""

    pipeline_name: str | None = None
    experiment_name: str | None = None
    pipeline_description: str | None = None
    base_image: str | None = None
    volumes: tuple[Volume, ...] = ()
    enable_caching: bool = True
    steps_defaults: StepSettings = field(default_factory=StepSettings)
    kfp_host: str | None = None
    namespace: str | None = None
    install_packages: bool = False
    #: How ``nb2pipe run`` starts steps: auto | fork | spawn (see kale_py.warm).
    local_isolation: Literal["auto", "fork", "spawn"] = "auto"
    #: REGISTRY/REPOSITORY: build a step image with the steps' distributions and push it there
    step_image: str | None = None
    #: keep the claims and snapshots made for a run after it ends
    keep_volumes: bool = False
    serving: ServingSettings = field(default_factory=ServingSettings)
    extra: tuple[tuple[str, Any], ...] = ()
