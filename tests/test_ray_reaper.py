"""Clean ends: processes a killed driver left are ended at the next start; Ray's own resume advice is dropped."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from clmem import ray_reaper

DRIVER = """
import subprocess, sys, time
from clmem import ray_reaper
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
ray_reaper.record_driver(None)
print(child.pid, flush=True)
time.sleep(300)
"""


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEM_CACHE_DIR", str(tmp_path))
    return ray_reaper.records_dir()


def test_processes_of_a_killed_driver_are_ended_at_the_next_start(records):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(driver.stdout.readline()))
    try:
        assert ray_reaper.reap_stale() == []  # its driver is alive: left alone
        assert child.is_running() and (records / f"{driver.pid}.json").is_file()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        assert child.is_running()  # orphaned, as Ray's agents are after kill -9
        assert ray_reaper.reap_stale() == [(driver.pid, 1)]
        child.wait(timeout=10)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert list(records.glob("*.json")) == []
    finally:
        for proc in (driver, child):
            try:
                proc.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass


def test_a_reused_pid_is_never_ended_and_damaged_records_are_dropped(records):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        records.mkdir(parents=True)
        started = psutil.Process(sleeper.pid).create_time()
        # a dead driver whose recorded process has the sleeper's pid but another start time
        (records / "1.json").write_text(json.dumps({"driver": [2 ** 22 + 7, 1.0], "session": None,
                                                    "processes": [[sleeper.pid, started - 100.0]]}))
        (records / "2.json").write_text("{not json")
        assert ray_reaper.reap_stale() == [(2 ** 22 + 7, 0)]
        time.sleep(0.2)
        assert sleeper.poll() is None  # still running
        assert list(records.glob("*.json")) == []
    finally:
        sleeper.kill()


def test_rays_tuner_restore_advice_is_dropped():
    from clmem.grid import quiet_restore_hint

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    quiet_restore_hint()
    logger, keep = logging.getLogger("ray.tune.tune"), Keep()
    logger.addHandler(keep)
    try:
        logger.warning('Experiment has been interrupted, but the most recent state was saved.\n'
                       'Resume experiment with: Tuner.restore(path="/x", trainable=...)')
        logger.warning("some other warning")
    finally:
        logger.removeHandler(keep)
    assert keep.messages == ["some other warning"]
