"""The Pipeline side panel in a real JupyterLab, driven in Debian's chromium with Playwright.

A user opens a notebook, enables the pipeline, makes a cell a step through the panel, sees the
step graph and a diagnostic on the cell that uses an undefined name, fixes the cell, runs the
pipeline locally until it succeeds, opens a step's log and compiles the pipeline for Kubeflow.
Screenshots go to the test's tmp folder.

Needs the built extension (``pip install -e .`` or ``jlpm build``) and /usr/bin/chromium
(``.ci/install_chromium.sh``); Playwright never downloads a browser here. Playwright's async
API runs on pytest-jupyter's event loop (tests/conftest.py): its sync API would start a second
loop.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless chromium without a sandbox (containers run as root) and without any network
# traffic of its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "kale-py-e2e-token"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: run .ci/install_chromium.sh"
)


def code_cell(source: str, tags: list[str] | None = None) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
            "metadata": {"tags": tags} if tags else {}}


# Cell 5 (JupyterLab index 4) is what the test makes a step; cell 6 uses an undefined name.
NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Mean of a small data set"},
        code_cell("import json", ["imports"]),
        code_cell("data = [1, 2, 3, 4]", ["step:load"]),
        code_cell("total = sum(data)"),
        code_cell("mean = total / len(data)\nprint('mean', mean)"),
        code_cell("print(json.dumps({'mean': mean, 'missing': n_missing}))", ["step:report"]),
    ],
    # A kernelspec: without one, JupyterLab asks for a kernel in a dialog that blocks clicks.
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _labextensions_dir(tmp: Path) -> Path | None:
    """A JUPYTER_PATH entry holding the freshly built extension of this source tree.

    An editable install copies the bundle into share/jupyter/labextensions once, at install
    time; linking the build output makes the test see the last `jlpm build`. None when the
    tree has no build (an installed wheel): JupyterLab then finds the installed copy.
    """
    built = REPO / "kale_py" / "labextension"
    if not (built / "static" / "style.js").exists():
        return None
    path = tmp / "jupyter_path"
    (path / "labextensions").mkdir(parents=True)
    (path / "labextensions" / "kale-py").symlink_to(built, target_is_directory=True)
    return path


def _extension_installed() -> bool:
    from jupyter_core.paths import jupyter_path

    return any((Path(p) / "kale-py" / "package.json").exists()
               for p in jupyter_path("labextensions"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on a free port: its URL and its root directory."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "mean.ipynb").write_text(json.dumps(NOTEBOOK, indent=1))
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # no "get Jupyter news?" toast over the panel
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"kale_py": True}}}))

    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    extra_path = _labextensions_dir(tmp_path)
    if extra_path is not None:
        env["JUPYTER_PATH"] = os.pathsep.join(
            filter(None, [str(extra_path), os.environ.get("JUPYTER_PATH")]))
    elif not _extension_installed():
        pytest.fail("the kale-py labextension is not built: run `pip install -e .` or `jlpm build`")

    port = _free_port()
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly",
         "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n"
                                + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_tag_see_graph_and_diagnostics_and_run_locally(
    lab: tuple[str, Path], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    url, root = lab
    page_errors: list[str] = []
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1440, "height": 900})
        try:
            page = await context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.goto(f"{url}/lab/tree/mean.ipynb?token={TOKEN}")
            cells = page.locator(".jp-NotebookPanel .jp-Cell")
            await expect(cells).to_have_count(6, timeout=60_000)

            # The tab toggles the panel; the layout restorer may have opened it already.
            tab = page.locator('.jp-SideBar.jp-mod-left li[data-id="kale-py-panel"]')
            if "lm-mod-current" not in (await tab.get_attribute("class") or ""):
                await tab.click()
            panel = page.locator("#kale-py-panel")
            await expect(panel.locator("#kale-py-notebook")).to_have_text("mean.ipynb")

            # Enable the pipeline: writes Kale's metadata key.
            await panel.locator("#kale-py-enable").click()
            await expect(panel.locator("#kale-py-analysis-status")).to_contain_text(
                "step(s)", timeout=30_000)

            # Make cell 5 a step named "train", without typing any tag.
            await cells.nth(4).locator(".jp-InputPrompt").click()
            await expect(panel.locator("#kale-py-cell > summary")).to_have_text("Cell 5")
            await panel.locator("#kale-py-role").select_option("step")
            await panel.locator("#kale-py-step-name").fill("train")
            await expect(panel.locator("#kale-py-cell-tags")).to_have_text("step:train")

            # The graph: load -> train -> report, the edge into train carrying its variables.
            graph = panel.locator("#kale-py-graph")
            for step in ("load", "train", "report"):
                await expect(graph.locator(f'.kale-py-node[data-step="{step}"]')).to_be_visible()
            edge = graph.locator('.kale-py-edge[data-source="load"][data-target="train"]')
            await expect(edge.locator(".kale-py-edge-label")).to_contain_text("total")

            # The undefined name is shown on its cell (cell 6) and in the panel's list.
            await expect(cells.nth(5)).to_have_class(re.compile(r"\bkale-py-cell-error\b"))
            await expect(cells.nth(5).locator(".kale-py-cell-diagnostics")).to_contain_text(
                "n_missing")
            await expect(panel.locator('#kale-py-diagnostics [data-code="NB103"]')).to_have_count(1)
            await page.screenshot(path=str(tmp_path / "panel-diagnostic.png"))

            # Fix the cell in the editor (unsaved): the live notebook is re-analysed.
            await cells.nth(5).locator(".cm-content").click()
            await page.keyboard.press("Control+a")
            await page.keyboard.insert_text("print(json.dumps({'mean': mean}))")
            await expect(cells.nth(5)).not_to_have_class(re.compile(r"\bkale-py-cell-error\b"),
                                                         timeout=15_000)
            await expect(panel.locator('[data-code="NB103"]')).to_have_count(0)

            # Run locally: the panel saves the notebook, starts the run and follows it.
            await panel.locator("#kale-py-run").click()
            status = panel.locator("#kale-py-run-status")
            finished = panel.locator('#kale-py-run-status:not([data-status="running"])').or_(
                panel.locator("#kale-py-run-section .kale-py-action-error"))
            await expect(finished.first).to_be_visible(timeout=180_000)
            if (not await status.count()
                    or await status.get_attribute("data-status") != "succeeded"):
                await page.screenshot(path=str(tmp_path / "panel-run-failed.png"))
                pytest.fail("the run did not succeed; the panel shows:\n"
                            + await panel.inner_text())
            for step in ("load", "train", "report"):
                await expect(panel.locator(
                    f'.kale-py-run-step[data-step="{step}"]')).to_have_attribute(
                    "data-status", "succeeded")
                await expect(graph.locator(f'.kale-py-node[data-step="{step}"]')).to_have_class(
                    re.compile(r"\bkale-py-status-succeeded\b"))

            # A step's log opens in the main area.
            await panel.locator('.kale-py-run-step[data-step="train"] .kale-py-open-log').click()
            await expect(page.locator(".kale-py-log")).to_contain_text("mean 2.5",
                                                                        timeout=15_000)
            shot = tmp_path / "panel-run.png"
            await page.screenshot(path=str(shot))
            print(f"screenshots: {tmp_path}")

            # Compile for Kubeflow: the YAML is written beside the notebook.
            await panel.locator("#kale-py-compile-section > summary").click()
            await panel.locator("#kale-py-compile").click()
            await expect(panel.locator("#kale-py-compile-result")).to_contain_text(
                "mean.yaml", timeout=60_000)
        finally:
            await context.close()

    # What the panel wrote is in the saved notebook: Kale's metadata and the new step tag.
    saved = json.loads((root / "mean.ipynb").read_text())
    assert saved["metadata"]["kubeflow_notebook"]["pipeline_name"] == "mean"
    assert saved["cells"][4]["metadata"]["tags"] == ["step:train"]
    assert "".join(saved["cells"][5]["source"]) == "print(json.dumps({'mean': mean}))"
    assert (root / "mean.yaml").stat().st_size > 0
    assert page_errors == []
