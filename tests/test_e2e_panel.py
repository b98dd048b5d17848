"""The Pipeline side panel in a real JupyterLab, driven in Debian's chromium with Playwright.

A user opens a notebook, enables the pipeline, makes a cell a step through the panel, sees the
step graph and a diagnostic on the cell that uses an undefined name, fixes the cell, runs the
pipeline locally until it succeeds, opens a step's log and compiles the pipeline for Kubeflow.
Screenshots go to the test's tmp folder.

Needs the built extension (``pip install -e .`` or ``jlpm build``) and /usr/bin/chromium
(``.ci/install_system.sh``); Playwright never downloads a browser here. Playwright's async
API runs on pytest-jupyter's event loop (tests/conftest.py): its sync API would start a second
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
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
    not CHROMIUM.exists(), reason="needs Debian's chromium: run .ci/install_system.sh"
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


@contextlib.asynccontextmanager
async def _lab_page(tmp_path: Path, page_errors: list[str]) -> AsyncIterator[Any]:
    """A page of headless Debian chromium; the page's script errors go to ``page_errors``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1440, "height": 900})
        try:
            page = await context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            yield page
        finally:
            await context.close()


async def _open_panel(page: Any) -> Any:
    """The Pipeline side panel (its tab toggles it; the layout restorer may have opened it)."""
    tab = page.locator('.jp-SideBar.jp-mod-left li[data-id="kale-py-panel"]')
    if "lm-mod-current" not in (await tab.get_attribute("class") or ""):
        await tab.click()
    return page.locator("#kale-py-panel")


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
    lab: tuple[str, Path], tmp_path: Path, kfp: Any
) -> None:
    from playwright.async_api import expect

    url, root = lab
    page_errors: list[str] = []
    async with _lab_page(tmp_path, page_errors) as page:
        await page.goto(f"{url}/lab/tree/mean.ipynb?token={TOKEN}")
        cells = page.locator(".jp-NotebookPanel .jp-Cell")
        await expect(cells).to_have_count(6, timeout=60_000)

        panel = await _open_panel(page)
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

        # Every code cell shows its step or role at its edge, updated without saving.
        label = cells.nth(4).locator(".kale-py-cell-step")
        await expect(label).to_have_text("train", timeout=15_000)
        await expect(label).to_have_attribute("title", re.compile(r"loads .*total.* from load"))
        await expect(cells.nth(1).locator(".kale-py-cell-step")).to_have_text("imports")
        await expect(cells.nth(3).locator(".kale-py-cell-step")).to_have_text("load")
        assert (await cells.nth(2).locator(".kale-py-cell-step").get_attribute("style")
                == await cells.nth(3).locator(".kale-py-cell-step").get_attribute("style"))
        assert json.loads((root / "mean.ipynb").read_text())["cells"][4]["metadata"] == {}
        # A click on a label selects its cell in the panel's tag editor.
        await cells.nth(2).locator(".kale-py-cell-step").click()
        await expect(panel.locator("#kale-py-cell > summary")).to_have_text("Cell 3")
        await expect(panel.locator("#kale-py-step-name")).to_have_value("load")

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

        # The step's HTML report opens in a tab, in a sandbox without the page's origin.
        await panel.locator(
            '.kale-py-run-step[data-step="train"] .kale-py-open-report').click()
        frame = page.locator("iframe.kale-py-report")
        await expect(frame).to_have_attribute("sandbox", "allow-scripts allow-popups")
        report = page.frame_locator("iframe.kale-py-report").locator("body")
        await expect(report).to_contain_text("mean 2.5", timeout=15_000)
        await page.screenshot(path=str(tmp_path / "panel-report.png"))

        # A second run; the history lists both, and the first can be reopened.
        first_run = (await status.inner_text()).split()[1].rstrip(":")
        await panel.locator("#kale-py-run").click()
        await expect(panel.locator("#kale-py-run-status")).not_to_contain_text(first_run)
        succeeded = panel.locator('#kale-py-run-status[data-status="succeeded"]')
        await expect(succeeded).to_be_visible(timeout=180_000)
        history = panel.locator("#kale-py-history .kale-py-history-run")
        await expect(history).to_have_count(2, timeout=15_000)
        await expect(history.first).to_have_attribute("data-status", "succeeded")
        await panel.locator(f'.kale-py-history-run[data-run="{first_run}"]').click()
        await expect(panel.locator("#kale-py-run-status")).to_contain_text(first_run)
        await expect(graph.locator('.kale-py-node[data-step="report"]')).to_have_class(
            re.compile(r"\bkale-py-status-succeeded\b"))

        # Compile for Kubeflow: the YAML is written beside the notebook.
        await panel.locator("#kale-py-compile-section > summary").click()
        await panel.locator("#kale-py-compile").click()
        await expect(panel.locator("#kale-py-compile-result")).to_contain_text(
            "mean.yaml", timeout=60_000)

        # Submit to a KFP API (the fake backend: no KFP can run here); the panel then
        # follows the run's state and names the step that failed.
        kfp.run_states = ("RUNNING", "FAILED")
        await panel.locator("#kale-py-submit-section > summary").click()
        await panel.locator("#kale-py-host").fill(kfp.url)
        await panel.locator("#kale-py-submit").click()
        await expect(panel.locator("#kale-py-submit-result")).to_contain_text(
            "started", timeout=60_000)
        kfp_status = panel.locator("#kale-py-kfp-status")
        await expect(kfp_status).to_have_attribute("data-state", "FAILED", timeout=30_000)
        await expect(panel.locator("#kale-py-kfp-failed-step")).to_contain_text("step-1")
        await page.screenshot(path=str(tmp_path / "panel-submitted.png"))

    # What the panel wrote is in the saved notebook: Kale's metadata and the new step tag.
    saved = json.loads((root / "mean.ipynb").read_text())
    assert saved["metadata"]["kubeflow_notebook"]["pipeline_name"] == "mean"
    assert saved["cells"][4]["metadata"]["tags"] == ["step:train"]
    assert "".join(saved["cells"][5]["source"]) == "print(json.dumps({'mean': mean}))"
    assert (root / "mean.yaml").stat().st_size > 0
    assert page_errors == []


async def _wait_all_inside(view: Any, items: Any, seconds: float = 10) -> None:
    """Wait until every item's box lies inside the view's box (a resize may re-fit)."""
    deadline = time.monotonic() + seconds
    while True:
        v = await view.bounding_box()
        outside = []
        for item in await items.all():
            b = await item.bounding_box()
            if not (v["x"] - 1 <= b["x"] and b["x"] + b["width"] <= v["x"] + v["width"] + 1
                    and v["y"] - 1 <= b["y"] and b["y"] + b["height"] <= v["y"] + v["height"] + 1):
                outside.append(b)
        if not outside:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(outside)} item(s) outside {v}: {outside[:3]}")
        await asyncio.sleep(0.2)


def _wide_notebook() -> dict[str, Any]:
    """30 steps: load, 10 parallel branches of 2 steps, a join and a tail of 8 steps; the
    last step sleeps, so a run can be cancelled while it runs."""
    cells = [code_cell("import time", ["imports"]), code_cell("base = 1", ["step:load"])]
    for b in range(10):
        cells.append(code_cell(f"a{b} = base + {b}", [f"step:branch{b}_fit"]))
        cells.append(code_cell(f"m{b} = a{b} * 2", [f"step:branch{b}_score"]))
    cells.append(code_cell("total = " + " + ".join(f"m{b}" for b in range(10)), ["step:join"]))
    for t in range(7):
        cells.append(code_cell(f"t{t} = total + {t}", [f"step:tail{t}"]))
    cells.append(code_cell("open('slow.pid', 'w').write('started')\ntime.sleep(120)\n"
                           "done = t6", ["step:slow"]))
    return {"cells": cells,
            "metadata": {"kernelspec": NOTEBOOK["metadata"]["kernelspec"],
                         "kubeflow_notebook": {"pipeline_name": "wide"}},
            "nbformat": 4, "nbformat_minor": 5}


async def test_graph_tab_highlights_cells_and_a_run_can_be_cancelled(
    lab: tuple[str, Path], tmp_path: Path
) -> None:
    from playwright.async_api import expect

    url, root = lab
    (root / "wide.ipynb").write_text(json.dumps(_wide_notebook(), indent=1))
    page_errors: list[str] = []
    async with _lab_page(tmp_path, page_errors) as page:
        await page.goto(f"{url}/lab/tree/wide.ipynb?token={TOKEN}")
        cells = page.locator(".jp-NotebookPanel .jp-Cell")
        await expect(cells).to_have_count(31, timeout=60_000)
        panel = await _open_panel(page)
        await expect(panel.locator("#kale-py-analysis-status")).to_contain_text(
            "30 step(s)", timeout=30_000)

        # The small graph fits the panel's width: no node is cut off.
        small = panel.locator("#kale-py-graph")
        box = await panel.bounding_box()
        graph_box = await small.bounding_box()
        assert box is not None and graph_box is not None
        assert graph_box["width"] <= box["width"]

        # The graph tab: all 30 steps laid out. Too wide to fit readably, it opens at a
        # readable scale from the top; Fit then shows all of it.
        await panel.locator("#kale-py-open-graph").click()
        main = page.locator("#kale-py-graph-main")
        await expect(main.locator(".kale-py-node")).to_have_count(30, timeout=15_000)
        zoom = page.locator(".kale-py-graph-zoom")
        await expect(zoom).to_have_text("75%")
        await page.screenshot(path=str(tmp_path / "graph-tab-readable.png"))
        await page.locator(".kale-py-graph-fit").click()
        await expect(zoom).not_to_have_text("75%")
        await _wait_all_inside(page.locator(".kale-py-graph-viewport"),
                               main.locator(".kale-py-node"))
        edge = main.locator('.kale-py-edge[data-source="branch3_fit"]'
                            '[data-target="branch3_score"]')
        await expect(edge.locator(".kale-py-edge-label")).to_have_text("a3")
        await page.screenshot(path=str(tmp_path / "graph-tab-30-steps.png"))

        # Zoom in, then fit again.
        fitted = await zoom.inner_text()
        await page.locator('.kale-py-graph-toolbar button[title="Zoom in"]').click()
        await expect(zoom).not_to_have_text(fitted)
        await page.locator(".kale-py-graph-fit").click()
        await expect(zoom).to_have_text(fitted)

        # A click on a step highlights its cell in the notebook.
        await main.locator('.kale-py-node[data-step="branch4_score"]').click()
        highlighted = page.locator(".jp-NotebookPanel .jp-Cell.kale-py-cell-highlight")
        await expect(highlighted).to_have_count(1)
        await expect(highlighted.locator(".kale-py-cell-step")).to_have_text("branch4_score")

        # Run, then cancel while the last step sleeps; the graph shows the states live.
        await panel.locator("#kale-py-run").click()
        await expect(main.locator('.kale-py-node[data-step="slow"]')).to_have_attribute(
            "data-status", "running", timeout=180_000)
        await expect(main.locator('.kale-py-node[data-step="join"]')).to_have_attribute(
            "data-status", "succeeded")
        await page.screenshot(path=str(tmp_path / "graph-tab-running.png"))
        await panel.locator("#kale-py-cancel").click()
        await expect(panel.locator("#kale-py-run-status")).to_have_attribute(
            "data-status", "cancelled", timeout=30_000)
        await expect(main.locator('.kale-py-node[data-step="slow"]')).to_have_attribute(
            "data-status", "cancelled")
        await expect(panel.locator("#kale-py-cancel")).to_have_count(0)

    assert (root / "slow.pid").exists()
    runs_dir = root / ".nb2pipe" / "runs"
    [run_dir] = [d for d in runs_dir.iterdir() if d.is_dir()]
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "cancelled" and manifest["steps"]["slow"]["status"] == "cancelled"
    assert page_errors == []


QUADRATIC = {
    "cells": [
        code_cell("X = 1\nY = 'a'", ["pipeline-parameters"]),
        code_cell("base = 10", ["step:load"]),
        code_cell("score = base - (X - 3) ** 2 + {'a': 0, 'b': 1}[Y]", ["step:score"]),
        code_cell("print(score)", ["pipeline-metrics"]),
    ],
    "metadata": {"kernelspec": NOTEBOOK["metadata"]["kernelspec"],
                 "kubeflow_notebook": {"pipeline_name": "quadratic"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


async def test_tune_from_the_panel(lab: tuple[str, Path], tmp_path: Path) -> None:
    """The Tune section: tick a parameter, give its range, run the trials, see them ranked
    and open the tuning's report."""
    from playwright.async_api import expect

    url, root = lab
    (root / "quadratic.ipynb").write_text(json.dumps(QUADRATIC, indent=1))
    page_errors: list[str] = []
    async with _lab_page(tmp_path, page_errors) as page:
        await page.goto(f"{url}/lab/tree/quadratic.ipynb?token={TOKEN}")
        await expect(page.locator(".jp-NotebookPanel .jp-Cell")).to_have_count(
            4, timeout=60_000)
        panel = await _open_panel(page)
        await expect(panel.locator("#kale-py-analysis-status")).to_contain_text(
            "2 step(s)", timeout=30_000)

        await panel.locator("#kale-py-tune-section > summary").click()
        x = panel.locator('.kale-py-tune-param[data-param="X"]')
        await x.locator(".kale-py-tune-enable").check()
        await x.locator(".kale-py-tune-spec").fill("1..5")
        await panel.locator("#kale-py-tune-algorithm").select_option("grid")
        await panel.locator("#kale-py-tune-trials").fill("5")
        await panel.locator("#kale-py-tune").click()

        result = panel.locator("#kale-py-tune-result")
        await expect(result).to_have_attribute("data-status", "succeeded", timeout=180_000)
        rows = result.locator(".kale-py-tune-trial")
        await expect(rows).to_have_count(5)
        # best first: X=3 gives 10
        await expect(rows.first.locator("td").nth(1)).to_have_text("10")
        await expect(rows.first.locator("td").nth(2)).to_have_text("X=3")
        await page.screenshot(path=str(tmp_path / "panel-tune.png"))

        await result.locator(".kale-py-open-tune-report").click()
        report = page.frame_locator("iframe.kale-py-report").locator("#trials")
        await expect(report).to_contain_text("10", timeout=15_000)
        await page.screenshot(path=str(tmp_path / "panel-tune-report.png"))

        # Verify: a kernel run and a pipeline run, every variable compared, per step
        await panel.locator("#kale-py-verify-section > summary").click()
        await panel.locator("#kale-py-verify").click()
        verified = panel.locator("#kale-py-verify-result")
        await expect(verified).to_have_attribute("data-ok", "true", timeout=180_000)
        await expect(verified.locator('.kale-py-verify-step[data-step="score"]')).to_contain_text(
            "same")
        await page.screenshot(path=str(tmp_path / "panel-verify.png"))

        # PodDefaults: off-cluster the panel says why it cannot list them
        await panel.locator("#kale-py-settings > summary").click()
        await panel.locator("#kale-py-list-poddefaults").click()
        await expect(panel.locator("#kale-py-poddefaults")).to_contain_text(
            "not running in a Kubernetes pod")
    assert page_errors == []


SERVED = {
    "cells": [
        code_cell("from sklearn.linear_model import Ridge", ["imports"]),
        code_cell("X, y = [[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0]", ["step:data"]),
        code_cell("model = Ridge().fit(X, y)", ["step:train", "serve:model"]),
    ],
    "metadata": {"kernelspec": NOTEBOOK["metadata"]["kernelspec"],
                 "kubeflow_notebook": {"pipeline_name": "served"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture
def kube_lab(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, Any]]:
    """JupyterLab whose server reaches a Kubernetes API through a kubeconfig: the fake API
    server of tests/fake_kubernetes.py (no cluster can run here), holding the
    InferenceService a finished run's deploy task made."""
    from fake_kubernetes import NAMESPACE, FakeKubernetes

    fake = FakeKubernetes(isvc_ready_after=2).start()
    fake.inference_services[(NAMESPACE, "model")] = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "model", "namespace": NAMESPACE, "generation": 1, "uid": "u",
                     "resourceVersion": "9",
                     "labels": {"app.kubernetes.io/created-by": "kale-py"}},
        "spec": {}}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "kf",
              "clusters": [{"name": "kf", "cluster": {"server": fake.url}}],
              "users": [{"name": "me", "user": {"token": fake.token}}],
              "contexts": [{"name": "kf", "context": {"cluster": "kf", "user": "me",
                                                      "namespace": NAMESPACE}}]}
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    url, root = request.getfixturevalue("lab")
    yield url, root, fake
    fake.stop()
    # a model server the test started and did not get to stop (it has its own session)
    for record in (root / ".nb2pipe" / "serving").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(int(json.loads(record.read_text())["pid"]), 9)


async def test_a_submitted_run_shows_where_its_model_is_served(
    kube_lab: tuple[str, Path, Any], tmp_path: Path, kfp: Any
) -> None:
    """Run a notebook with a serve:VAR model, serve its model locally from the panel and ask
    it for a prediction; submit it (to the fake KFP backend), and once the run has succeeded
    the panel reads the model's InferenceService and links its V2 URL."""
    from playwright.async_api import expect

    url, root, fake = kube_lab
    (root / "served.ipynb").write_text(json.dumps(SERVED, indent=1))
    kfp.run_states = ("RUNNING", "SUCCEEDED")
    page_errors: list[str] = []
    async with _lab_page(tmp_path, page_errors) as page:
        await page.goto(f"{url}/lab/tree/served.ipynb?token={TOKEN}")
        await expect(page.locator(".jp-NotebookPanel .jp-Cell")).to_have_count(
            3, timeout=60_000)
        panel = await _open_panel(page)
        await expect(panel.locator("#kale-py-analysis-status")).to_contain_text(
            "2 step(s)", timeout=30_000)
        # Serve locally: run the pipeline, then serve the model its run saved, ask it for a
        # prediction over V2 as a user's kernel would, and stop it
        await panel.locator("#kale-py-run").click()
        await expect(panel.locator("#kale-py-run-status")).to_have_attribute(
            "data-status", "succeeded", timeout=120_000)
        await panel.locator("#kale-py-serve-section > summary").click()
        await panel.locator("#kale-py-serve").click()
        serving = panel.locator("#kale-py-serve-result")
        await expect(serving).to_contain_text("Serving model (step train", timeout=120_000)
        infer = await serving.get_attribute("data-url")
        assert infer is not None and infer.endswith("/v2/models/model/infer")
        request = urllib.request.Request(infer, data=json.dumps({"inputs": [{
            "name": "x", "shape": [1, 1], "datatype": "FP64", "data": [3.0]}]}).encode(),
            headers={"Content-Type": "application/json"})
        answer = await asyncio.to_thread(lambda: json.loads(
            urllib.request.urlopen(request, timeout=30).read()))
        [prediction] = answer["outputs"][0]["data"]
        # Ridge(alpha=1) through (0, 0), (1, 1), (2, 2): slope 2/3, intercept 1/3
        assert abs(prediction - 7 / 3) < 1e-9
        await page.screenshot(path=str(tmp_path / "panel-serve.png"))
        await panel.locator("#kale-py-serve-stop").click()
        await expect(serving).to_have_count(0, timeout=30_000)

        await panel.locator("#kale-py-submit-section > summary").click()
        await panel.locator("#kale-py-host").fill(kfp.url)
        await panel.locator("#kale-py-submit").click()
        served = panel.locator('.kale-py-served-model[data-variable="model"]')
        await expect(served).to_contain_text("deployed when the run ends", timeout=60_000)
        await expect(panel.locator("#kale-py-kfp-status")).to_have_attribute(
            "data-state", "SUCCEEDED", timeout=30_000)
        # KServe reports it not ready first, then ready: Refresh reads it again
        await expect(served).to_have_attribute("data-state", "not ready", timeout=15_000)
        await panel.locator("#kale-py-served-refresh").click()
        await expect(served).to_have_attribute("data-state", "ready", timeout=15_000)
        link = served.locator("a")
        await expect(link).to_have_attribute(
            "href", "http://model.kubeflow-user-example-com.kubeflow.example.com"
            "/v2/models/model/infer")
        await page.screenshot(path=str(tmp_path / "panel-served.png"))
    assert page_errors == []
