"""Run compiled container components with ``kfp.local`` on this machine, without Docker.

``kfp.local.SubprocessRunner`` refuses container components and warns about images without
"python" in their name; a kale_py step is a container component whose command is
``python3 -c BOOTSTRAP ...`` and needs nothing from the image but Python. So, for the duration of
the context manager, both checks are switched off and the command's ``python3`` runs as this
interpreter. Everything else (placeholder resolution, artifact wiring, executor output collection,
retries) is kfp.local's own code: the same pipeline file that is submitted to a cluster runs here.

Usage::

    with container_components_as_subprocesses(pipeline_root=tmp_path / "runs"):
        kfp.components.load_component_from_file("pipeline.yaml")(n=3)
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def container_components_as_subprocesses(pipeline_root: Path) -> Iterator[None]:
    """``kfp.local`` initialised with a patched SubprocessRunner; restored on exit."""
    from kfp import local
    from kfp.local import subprocess_task_handler as handler

    cls = handler.SubprocessTaskHandler
    saved = (cls.validate_not_container_component, cls.validate_image,
             handler.replace_python_executable)

    def python3_is_this_interpreter(command: list[str], executable: str) -> list[str]:
        # Only the program itself: kfp's version rewrites "python3" inside every argument.
        return [sys.executable if word == "python3" else word for word in command]

    cls.validate_not_container_component = lambda self, command: None  # type: ignore[method-assign]
    cls.validate_image = lambda self, image: None  # type: ignore[method-assign]
    handler.replace_python_executable = python3_is_this_interpreter
    try:
        with warnings.catch_warnings():
            # kfp.local says, once per task, that resources and Kubernetes settings are not
            # applied on this machine; that is expected here.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
            local.init(runner=local.SubprocessRunner(use_venv=False),
                       pipeline_root=str(pipeline_root), raise_on_error=True)
            yield
    finally:
        (cls.validate_not_container_component, cls.validate_image,
         handler.replace_python_executable) = saved
