"""Screenshot of the MLflow UI showing a grid's runs, taken with headless Chromium.

Starts `mlflow ui` on 127.0.0.1 over the given store (the same command `clmem ui` runs), opens the
experiment's run list in Debian's Chromium (`apt-get install chromium`) and saves a PNG.

Usage: python scripts/mlflow_ui_screenshot.py --experiment quickstart [--tracking-uri sqlite:///mlflow.db]
       [--out mlflow_ui.png] [--port 5055]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def wait_for(url: str, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {url} within {seconds:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default="mlflow_ui.png")
    parser.add_argument("--port", type=int, default=5055)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2

    from clmem.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    exp_id = tracker.experiment_id(args.experiment, create=False)
    if exp_id is None:
        print(f"no experiment {args.experiment!r} in {tracker.uri}", file=sys.stderr)
        return 2
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.uri,
                               "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"{base}/health")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            "--window-size=1600,1000", "--virtual-time-budget=20000",
                            f"--screenshot={args.out}", f"{base}/#/experiments/{exp_id}/runs"],
                           check=True, timeout=180, capture_output=True)
    finally:  # the UI's server, job runner and workers share its process group
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"screenshot of {base}/#/experiments/{exp_id}/runs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
