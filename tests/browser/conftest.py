"""Fixtures of the real-browser tests: a tiny run inside the repository, a headless JupyterLab
serving the repository on 127.0.0.1, and Debian's Chromium driven by Playwright.

Nothing here imports Playwright or JupyterLab at module level: without ``CTBRAINAGE_BROWSER=1``
``test_browser.py`` skips itself and none of these fixtures is ever set up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / "runs" / "browser-test"  # inside the repository: JupyterLab's root shows it
RUN_TIMEOUT_S = 900  # building the tiny run through step 05 from scratch: ~1.5 min on 2 cores
LAB_START_TIMEOUT_S = 90

# JupyterLab user settings: no news or update-check toast, no autosave into the run's notebooks
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


@pytest.fixture(scope="session")
def browser_run(request) -> Path:
    """The tiny profile run through step 05 in ``runs/browser-test`` (run_all skips the steps
    that are already done, so a complete run is reused in seconds)."""
    command = [
        sys.executable,
        "run_all.py",
        "--profile",
        "tiny",
        "--run-dir",
        str(RUN_DIR.relative_to(REPO)),
        "--to",
        "5",
        "--no-progress",
    ]
    start = time.monotonic()
    done = subprocess.run(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}"
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\nruns/browser-test ready in {time.monotonic() - start:.0f} s")
    return RUN_DIR


@pytest.fixture(scope="session")
def shots(browser_run) -> Path:
    """Where the tests save their screenshots: ``runs/browser-test/screenshots/``."""
    folder = browser_run / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server on 127.0.0.1."""

    port: int
    token: str
    log: Path

    def url(self, path: str) -> str:
        """Address of ``path`` (e.g. ``lab/tree/x.ipynb``) with the token."""
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        """JSON answer of a REST call (``api/...``); None for an empty answer."""
        request = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every session and its kernel (each opened notebook starts one)."""
        for session in self.api("api/sessions"):
            self.api(f"api/sessions/{session['id']}", method="DELETE")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def lab(browser_run, tmp_path_factory):
    """A headless JupyterLab serving the repository (token-protected, 127.0.0.1 only), with its
    own settings, workspaces, config and runtime folders; stopped (kernels too) at teardown."""
    home = tmp_path_factory.mktemp("jupyterlab")
    for plugin, values in LAB_SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    server = Lab(_free_port(), secrets.token_hex(16), home / "jupyterlab.log")
    command = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        "--allow-root",
        f"--port={server.port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.token={server.token}",
        f"--ServerApp.root_dir={REPO}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no PyPI look-ups
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: commands, kernel status
        f"--LabApp.user_settings_dir={home / 'settings'}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
    ]
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    with server.log.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + LAB_START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"JupyterLab exited:\n{server.log_tail()}"
            try:
                server.api("api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"JupyterLab not up:\n{server.log_tail()}"
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (``apt-get install chromium``) driven by Playwright, headless."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("no Chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab):
    """A fresh JupyterLab page; its kernels are shut down afterwards."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()
    lab.shutdown_kernels()
