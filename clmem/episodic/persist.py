"""Atomic, verified store files.

Layout: one ASCII header line ``CLMEM-EPISODIC 1 {"nbytes": N, "sha256": "..."}\\n`` followed by
``N`` payload bytes (a ``torch.save`` of the state dict, loaded back with ``weights_only=True``).
Saving writes a temporary file in the target's directory, fsyncs it, then ``os.replace``s it over
the target (and fsyncs the directory), so a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

MAGIC = b"CLMEM-EPISODIC 1 "
CHUNK = 1 << 20
MAX_HEADER = 4096


class StoreFileError(ValueError):
    """A store file is missing, truncated, corrupted or not a store file."""


def _write_all(fh: BinaryIO, header: bytes, payload: bytes) -> None:
    """Write the header then the payload in chunks."""
    fh.write(header)
    view = memoryview(payload)
    for start in range(0, len(view), CHUNK):
        fh.write(view[start:start + CHUNK])


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` with a SHA-256 header; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    meta = {"nbytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    header = MAGIC + json.dumps(meta, sort_keys=True).encode("ascii") + b"\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, header, payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _read_header(path: Path, fh: BinaryIO) -> dict[str, Any]:
    """Parse and check the header line."""
    line = fh.readline(MAX_HEADER)
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise StoreFileError(f"{path}: not a clmem episodic store file (expected a header starting {MAGIC!r})")
    try:
        meta = json.loads(line[len(MAGIC):])
        return {"nbytes": int(meta["nbytes"]), "sha256": str(meta["sha256"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreFileError(f"{path}: malformed header (expected JSON with nbytes and sha256)") from exc


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a file written by :func:`save_state`; raise :class:`StoreFileError` otherwise."""
    source = Path(path)
    if not source.is_file():
        raise StoreFileError(f"{source}: no such store file")
    with open(source, "rb") as fh:
        meta = _read_header(source, fh)
        payload = fh.read()
    if len(payload) != meta["nbytes"]:
        raise StoreFileError(f"{source}: truncated or padded (expected {meta['nbytes']} payload bytes, found {len(payload)})")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != meta["sha256"]:
        raise StoreFileError(f"{source}: corrupted (expected SHA-256 {meta['sha256']}, got {digest})")
    return torch.load(io.BytesIO(payload), weights_only=True)
