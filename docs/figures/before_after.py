"""Draws docs/figures' before-and-after images: one small study trained and shown by two copies of hpo.

    python docs/figures/before_after.py --old /path/to/old/checkout --new . --data cifar10-jpeg.tar.gz

For each checkout (run through PYTHONPATH, with this interpreter): a 2-point grid of the base
model (learning rates 0.01 and 0.001, batch 64, 3 epochs) on 600 CIFAR-10 images, trained by
``hpo worker``; then ``hpo dashboard`` in headless Chromium (Debian's chromium and
chromium-driver). Writes dashboard-study-{before,after}.png (the study page, at its user
attributes) and confusion-matrix-{before,after}.png (trial 0's, from the artifact store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

STUDY = """
[study]
name = "demo"
description = "Two learning rates of the report's base model, 3 epochs on 600 images."
metric = "val_accuracy"
direction = "maximize"

[sampler]
type = "grid"
seed = 3

[data]
source = "cifar10"
protocol = "validation_split"
validation_split = 0.2

[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.01, 0.001]
batch_size = [64]
epochs = [3]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the code before")
    parser.add_argument("--new", type=Path, default=Path("."), help="checkout of the code after")
    parser.add_argument("--data", required=True, help="the CIFAR-10 archive (as HPO_DATA)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    for side, checkout in (("before", args.old), ("after", args.new)):
        with tempfile.TemporaryDirectory(prefix=f"hpo-{side}-") as tmp:
            draw(checkout.resolve(), Path(tmp), args.data, args.out, side)


def hpo(checkout: Path, folder: Path, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.Popen([sys.executable, "-m", "hpo", "--storage", "sqlite:///hpo.db", *args],
                            cwd=folder, env=env, **kw)  # type: ignore[call-overload]


def draw(checkout: Path, folder: Path, data: str, out: Path, side: str) -> None:
    (folder / "demo.toml").write_text(STUDY)
    worker = hpo(checkout, folder, "worker", "demo.toml", "--data", data, "--subset", "600")
    if worker.wait() != 0:
        sys.exit(f"{side}: hpo worker exited with {worker.returncode}")
    shutil.copy(confusion_matrix(folder), out / f"confusion-matrix-{side}.png")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dashboard = hpo(checkout, folder, "dashboard", "--port", str(port),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(360):
            try:
                urllib.request.urlopen(f"{url}/api/studies", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        screenshot(f"{url}/dashboard/studies/1", out / f"dashboard-study-{side}.png")
    finally:
        dashboard.terminate()
        dashboard.wait()


def confusion_matrix(folder: Path) -> Path:
    """Trial 0's confusion-matrix file, found by the name its artifact link records."""
    with sqlite3.connect(folder / "hpo.db") as db:
        rows = db.execute("SELECT value_json FROM trial_system_attributes JOIN trials USING (trial_id) "
                          "WHERE number = 0 AND key LIKE 'artifacts:%'").fetchall()
    for (value,) in rows:
        meta = json.loads(json.loads(value))
        if meta["filename"].startswith("confusion_matrix"):
            return folder / "hpo-artifacts" / meta["artifact_id"]
    sys.exit("trial 0 has no confusion matrix")


def screenshot(page: str, path: Path) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page)
        heading = "//*[normalize-space(text())='Study User Attributes']"
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, heading))
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.XPATH, heading))
        time.sleep(1.0)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
