"""Verified state on Kubeflow: the compiled YAML run by kfp.local (see tests/kfp_local_shim.py).

Between the producing step and its consumer, the producer's state artifact is damaged the
ways someone with write access to the shared artifact store could (each tamper kind of
tests/test_trust.py); the step runtime artifact is replaced by one that runs other code. The
digests travel through KFP's parameters and the compiled spec, so each is refused before
anything is unpickled or executed, with a message naming the variable and the step.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_trust import EXPECTED, TAMPERS, two_steps

from kale_py.api import compile_notebook


def _arg_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1] if flag in command else ""


@pytest.fixture
def kfp_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Callable[[Callable[[list[str]], None]], None]]:
    """Compile the two-step notebook and run it on kfp.local; ``before(command)`` is called
    with each task's resolved command line just before the task runs."""
    from kfp import components
    from kfp.local import subprocess_task_handler as handler
    from kfp_local_shim import container_components_as_subprocesses

    notebook = two_steps(tmp_path)
    compiled = compile_notebook(notebook, tmp_path / "pipeline.yaml")
    monkeypatch.chdir(tmp_path)
    original = handler.SubprocessTaskHandler.run

    def go(before: Callable[[list[str]], None]) -> None:
        def run(self: handler.SubprocessTaskHandler) -> object:
            before(list(self.full_command))
            return original(self)

        monkeypatch.setattr(handler.SubprocessTaskHandler, "run", run)
        with container_components_as_subprocesses(pipeline_root=tmp_path / "kfp"):
            components.load_component_from_file(compiled["path"])()

    yield go


def test_the_compiled_pipeline_passes_digests_and_runs(
    kfp_run: Callable[[Callable[[list[str]], None]], None], capfd: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, list[str]] = {}
    kfp_run(lambda command: seen.update({_arg_after(command, "--step"): command}))
    assert EXPECTED in capfd.readouterr().out
    assert "--manifest-digest-out" in seen["one"]
    digest = _arg_after(seen["two"], "--state-digest")
    assert re.fullmatch(r"one=sha256:[0-9a-f]{64}", digest)
    runtime_digest = seen["one"][seen["one"].index("--runtime") + 2]
    assert re.fullmatch(r"[0-9a-f]{64}", runtime_digest)  # from the spec, not the store


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_damaged_state_in_the_artifact_store_is_refused(
    kfp_run: Callable[[Callable[[list[str]], None]], None], capfd: pytest.CaptureFixture[str],
    tmp_path: Path, kind: str,
) -> None:
    tamper, variable = TAMPERS[kind]
    marker = tmp_path / "pwned"

    def before(command: list[str]) -> None:
        if _arg_after(command, "--step") == "two":
            state = Path(_arg_after(command, "--state-in").split("=", 1)[1])
            tamper(state, marker)

    with pytest.raises(RuntimeError):
        kfp_run(before)
    out = capfd.readouterr()
    text = out.out + out.err
    assert not marker.exists()
    assert "RESULT" not in text
    assert "step 'two' failed: " in text
    if kind == "edited manifest":
        assert "its digest differs from the one its step reported" in text
    else:
        assert re.search(f"cannot load variable {variable}", text), text
    assert "re-run step 'one'" in text


def test_a_replaced_step_runtime_is_refused_before_it_runs(
    kfp_run: Callable[[Callable[[list[str]], None]], None], capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"

    def before(command: list[str]) -> None:
        if "--runtime" in command:
            runtime = Path(_arg_after(command, "--runtime"))
            with zipfile.ZipFile(runtime) as archive:
                files = {name: archive.read(name) for name in archive.namelist()}
            files["kale_py/__init__.py"] = f"open({str(marker)!r}, 'w')\n".encode()
            with zipfile.ZipFile(runtime, "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)

    with pytest.raises(RuntimeError):
        kfp_run(before)
    out = capfd.readouterr()
    assert not marker.exists()
    assert "differs from the one this pipeline was compiled with" in out.out + out.err
