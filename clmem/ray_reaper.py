"""Ray processes left behind by a killed ``clmem grid`` driver: recorded at start, ended at the next start.

A driver that starts a local Ray writes a record (``$CLMEM_CACHE_DIR/ray-drivers/<pid>.json``, default
``~/.cache/clmem``): its own pid and start time, the Ray session folder, and the processes it started. A clean
end removes the record. If the driver is killed (``kill -9``), Ray's agents (``DashboardAgent``,
``RuntimeEnvAgent``, workers) can outlive it; the next ``clmem grid`` (or ``--resume``) finds the record of a
driver that is no longer alive and ends every process that is still the one recorded (same pid *and* start
time, so a reused pid is never touched) or that names the dead session in its command line. This module knows
nothing of Ray's API (:mod:`clmem.grid` gives it the session folder); it uses psutil.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

__all__ = ["forget_driver", "reap_stale", "record_driver", "records_dir"]


def records_dir() -> Path:
    base = os.environ.get("CLMEM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clmem"
    return Path(base) / "ray-drivers"


def _same(pid: int, started: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that started at ``started`` (else None)."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - started) < 1e-3 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def record_driver(session_dir: str | None) -> Path | None:
    """Record this process as a driver with a local Ray (call after ``ray.init``); returns the record."""
    me = psutil.Process()
    children = [[p.pid, p.create_time()] for p in me.children(recursive=True)]
    record = {"driver": [me.pid, me.create_time()], "session": session_dir, "processes": children}
    path = records_dir() / f"{me.pid}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        return None  # no record: a later start cannot clean up after this one, nothing else changes
    return path


def forget_driver() -> None:
    """Remove this driver's record (its Ray was shut down cleanly)."""
    (records_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def _leftovers(record: dict) -> list[psutil.Process]:
    found = {p.pid: p for pid, started in record.get("processes", []) if (p := _same(int(pid), float(started)))}
    session = record.get("session")
    if session:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid != os.getpid() and any(session in part for part in proc.info.get("cmdline") or []):
                found.setdefault(proc.pid, proc)
    return list(found.values())


def _end(processes: list[psutil.Process], grace_s: float = 5.0) -> int:
    for proc in processes:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(processes)


def reap_stale() -> list[tuple[int, int]]:
    """End the processes of recorded drivers that are no longer alive; ``[(driver pid, processes ended)]``."""
    ended = []
    for path in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid, started = record["driver"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a damaged record names nothing we could safely end
            continue
        if _same(int(pid), float(started)) is not None:
            continue  # that driver is still running its grid
        ended.append((int(pid), _end(_leftovers(record))))
        path.unlink(missing_ok=True)
    return ended
