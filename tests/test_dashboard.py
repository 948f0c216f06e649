"""The dashboard as a user sees it: ``hpo dashboard`` in a real process, driven by headless Chromium.

Also what the dashboard relies on: it binds the loopback address unless told otherwise (and
warns when told), and a running trial's per-epoch validation accuracy reaches the storage
while the trial is still running, so its curve grows live.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, TWO_LR_GRID, missing, ok, run_hpo, write_study

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "test-artifacts" / "dashboard"
START_TIMEOUT_S = 180.0  # the dashboard process imports TensorFlow on the way; slow on a busy CPU

TINY_GRID = """
description = "Dashboard test: two learning rates, one epoch."
experiment = 3
""" + TWO_LR_GRID + """
[[reference]]
learning_rate = 0.001
batch_size = 64
epochs = 1
test_accuracy = 0.4321
test_loss = 1.87
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


# Run inside a network namespace, where this process cannot reach: one HTTP request, exit 0 if answered.
_PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3).read()"


class Dashboard:
    """``hpo dashboard`` as a subprocess, with its stderr in a file; in network namespace
    ``netns`` if one is given (then only :meth:`answers` can reach it)."""

    def __init__(self, db: str, folder: Path, *args: str, netns: str | None = None) -> None:
        self.port = _free_port()
        self.netns = netns
        self.log = folder / f"dashboard-{self.port}.log"
        self._log_file = self.log.open("w")
        inside = ["ip", "netns", "exec", netns] if netns else []
        self.process = subprocess.Popen(
            [*inside, sys.executable, "-m", "hpo", "--storage", db, "dashboard", "--port", str(self.port), *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, cwd=folder, env={**os.environ})
        self.url = f"http://127.0.0.1:{self.port}"

    def answers(self, address: str = "127.0.0.1") -> bool:
        """Whether the dashboard answers an HTTP request to ``address`` from its own network."""
        url = f"http://{address}:{self.port}/api/studies"
        if self.netns is None:
            try:
                _get(url, timeout=3)
                return True
            except (urllib.error.URLError, OSError):
                return False
        probe = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c", _PROBE, url],
                               capture_output=True, timeout=60)
        return probe.returncode == 0

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"dashboard exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            if self.answers():
                return
            time.sleep(0.5)
        pytest.fail(f"dashboard did not answer in {START_TIMEOUT_S:.0f}s: {self.stderr()[-2000:]}")

    def stderr(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


@pytest.fixture
def start_dashboard(tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def start(db: str, *args: str, netns: str | None = None) -> Dashboard:
        dashboard = Dashboard(db, tmp_path, *args, netns=netns)
        started.append(dashboard)
        dashboard.wait_until_up()
        return dashboard

    yield start
    for dashboard in started:
        dashboard.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        missing(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()




def _wait_for_text(driver: Any, *texts: str, timeout: float = 30.0) -> str:
    """The page's visible text, once it shows every one of ``texts``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> str | bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout).until(shown)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"page {driver.current_url} never showed {texts}; it shows:\n{body[:3000]}")


def _wait_for_images(driver: Any, *names: str, timeout: float = 30.0) -> None:
    """Wait until the browser has loaded (and can draw) every image whose alt text is in ``names``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    script = """return Array.from(document.images)
        .filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt);"""
    loaded: list[str] = []

    def all_loaded(d: Any) -> bool:
        loaded[:] = d.execute_script(script)
        return all(name in loaded for name in names)

    try:
        WebDriverWait(driver, timeout).until(all_loaded)
    except TimeoutException:
        absent = [name for name in names if name not in loaded]
        pytest.fail(f"images {absent} did not load in {timeout:.0f}s on {driver.current_url}; loaded: {loaded}")


def _screenshot(driver: Any, name: str, scroll_to: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if scroll_to:
        element = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{scroll_to}']")
        driver.execute_script("arguments[0].scrollIntoView()", element)
        time.sleep(0.5)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


@pytest.mark.browser
def test_dashboard_shows_the_study_its_trials_artifacts_and_note(
        tmp_path: Path, data_path: str, browser: Any, start_dashboard: Callable[..., Dashboard]) -> None:
    from selenium.webdriver.common.by import By

    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study_file = write_study(tmp_path, "dashgrid", TINY_GRID)
    ok(run_hpo("worker", str(study_file), "--data", data_path, "--subset", "200", storage=db, cwd=tmp_path))
    trials = optuna.load_study(study_name="dashgrid", storage=db).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]

    dashboard = start_dashboard(db)
    summaries = json.loads(_get(f"{dashboard.url}/api/studies"))["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == "dashgrid")
    pages = f"{dashboard.url}/dashboard/studies/{study_id}"

    browser.get(pages)
    _wait_for_text(browser, f"dashgrid (id={study_id})", "History", "Best Trial")
    _screenshot(browser, "study")
    # The study's attributes read as words, each a line: hpo's JSON record is not among them.
    attrs = {a["key"]: a["value"] for a in json.loads(_get(f"{dashboard.url}/api/studies/{study_id}"))["user_attrs"]}
    assert set(attrs) == {"study", "data set", "model"}
    assert all(len(value) <= 160 and "{" not in value for value in attrs.values()), attrs
    assert attrs["study"] == "grid of 2 points; maximize val_accuracy"
    body = _wait_for_text(browser, "Study User Attributes", attrs["data set"], attrs["model"])
    assert "hpo:definition" not in body and '"space"' not in body
    _screenshot(browser, "study-attributes", scroll_to="Study User Attributes")

    browser.get(f"{pages}/trials")
    body = _wait_for_text(browser, "2 Trials", "Trial 0", "Trial 1", "Artifacts")
    assert "Complete" in body
    shown = trials[0]
    assert f"learning_rate {shown.params['learning_rate']}" in body
    assert f"test_accuracy {shown.user_attrs['test_accuracy']}" in body
    # The worker's plots are served from the artifact store and render in the browser.
    _wait_for_images(browser, f"confusion_matrix_trial{shown.number}.png",
                     f"learning_curves_trial{shown.number}.png")
    links = [a.text for a in browser.find_elements(By.TAG_NAME, "a")] + [browser.page_source]
    assert any(f"metrics_trial{shown.number}.json" in text for text in links)
    _screenshot(browser, "trial0-artifacts", scroll_to="Artifacts")

    other = trials[1]
    browser.find_element(By.XPATH, f"//*[normalize-space(text())='Trial {other.number}']").click()
    body = _wait_for_text(browser, f"Trial {other.number} (trial_id=")
    assert f"learning_rate {other.params['learning_rate']}" in body
    _wait_for_images(browser, f"confusion_matrix_trial{other.number}.png")
    _screenshot(browser, "trial1-artifacts", scroll_to="Artifacts")
    # hpo's readable names are served for the trial that holds them, and nothing else is.
    trial_id = other._trial_id
    for name in ("nope.png", "..", "..%2Fhpo.db", "dashgrid-model_trial0-x.keras"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"{dashboard.url}/artifacts/{study_id}/{trial_id}/{name}")
        assert refused.value.code == 404, name

    # The study note: the description and the report's numbers, saved when the study was created.
    browser.get(f"{pages}/note")
    body = _wait_for_text(browser, "Dashboard test: two learning rates, one epoch.")
    assert "The report's Table 1" in body and "0.4321" in body and "1.87" in body
    _screenshot(browser, "note")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def outward_namespace() -> Iterator[tuple[str, str]]:
    """A network namespace of this test's own with an outward address: (namespace, address).

    Inside it are loopback and a veth pair with both ends, 10.254.0.1 and .2, so a server there has
    an address besides 127.0.0.1 to be reached on, whatever this machine's own network is, and
    that network is left untouched. Needs root and ``ip`` (iproute2).
    """
    name = f"hpo-dash-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as e:
        missing(f"cannot make a network namespace (needs root and iproute2): {getattr(e, 'stderr', '') or e}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "out0", "type", "veth", "peer", "name", "out1")
        for device, address in (("out0", "10.254.0.1/30"), ("out1", "10.254.0.2/30")):
            _ip("-n", name, "addr", "add", address, "dev", device)
            _ip("-n", name, "link", "set", device, "up")
        yield name, "10.254.0.1"
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)  # takes the pair too


def test_dashboard_binds_loopback_and_warns_when_exposed(
        tmp_path: Path, start_dashboard: Callable[..., Dashboard], outward_namespace: tuple[str, str]) -> None:
    netns, outward = outward_namespace
    db = f"sqlite:///{tmp_path / 'hpo.db'}"

    private = start_dashboard(db, netns=netns)
    assert "no authentication" not in private.stderr()
    assert f"http://127.0.0.1:{private.port}/" in private.stderr()
    assert not private.answers(outward), f"the default dashboard answers on {outward}"
    private.stop()

    exposed = start_dashboard(db, "--host", "0.0.0.0", netns=netns)
    warnings = [line for line in exposed.stderr().splitlines() if "no authentication" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], exposed.stderr()[-2000:]
    assert f"0.0.0.0:{exposed.port}" in warnings[0]
    assert exposed.answers(outward), f"the dashboard on 0.0.0.0 does not answer on {outward}"


def test_epoch_values_stream_in_while_the_trial_runs(tmp_path: Path, data_path: str) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study_file = write_study(tmp_path, "live", """
[sampler]
type = "fixed"
[data]
protocol = "validation_split"
validation_split = 0.2
[space]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 32
epochs = 6
""")
    ok(run_hpo("create", str(study_file), "--data", data_path, "--subset", "400", storage=db))
    study = optuna.load_study(study_name="live", storage=db)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", db, "worker", "live",
                               "--data", data_path, "--subset", "400"], stdout=log, stderr=subprocess.STDOUT)
    seen_while_running: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and worker.poll() is None:
            (trial,) = study.get_trials(deepcopy=False)
            if trial.state == TrialState.RUNNING and trial.intermediate_values:
                seen_while_running = dict(trial.intermediate_values)
                break
            time.sleep(0.2)
        assert worker.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()

    assert seen_while_running, "no epoch value reached the storage while the trial was running"
    assert min(seen_while_running) == 1 and len(seen_while_running) < 6
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
    # What was streamed is what was kept: the early epochs did not change afterwards.
    assert all(trial.intermediate_values[step] == value for step, value in seen_while_running.items())
    assert trial.value == pytest.approx(trial.intermediate_values[6], abs=1e-5)
