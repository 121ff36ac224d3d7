"""Build, cache and load the optional C kernels in ``clmem/memory/native`` (``link.c``, ``dnc.c``; headers beside them).

One library per kernel source: the source is compiled twice with the system C compiler, ``-DCLMEM_DOUBLE=0``
(float, symbols ``*_f32``) and ``-DCLMEM_DOUBLE=1`` (double, ``*_f64``), with the flags ``FLAGS`` (``-O3
-march=native``, no OpenMP runtime: single-threaded), and both objects are linked into ``<name>-<key>.so`` in the
cache directory (``$CLMEM_NATIVE_CACHE``, default ``~/.cache/clmem/native``). The key is a SHA-256 of the source and
every header beside it, the flags, the compiler's command and ``--version`` output and the CPU (``-march=native``).
A JSON file beside the library records the full key and the library's own SHA-256; a cached library is loaded only
when both match, otherwise it is rebuilt. Builds run under a file lock, so processes that start together build once.

What ``load_library`` returns or raises:

- ``CLMEM_NATIVE=0``: ``None`` (the callers' torch-op path), nothing is built.
- no C compiler (``$CC``, ``cc``, ``gcc``, ``clang``): ``None``; ``NativeBuildError`` if ``CLMEM_REQUIRE_NATIVE=1``.
- the build or the load fails: ``NativeBuildError`` (the source file, the compiler's first error line, then its
  stderr) raised if ``CLMEM_REQUIRE_NATIVE=1``, otherwise issued once as a ``RuntimeWarning``, then ``None``.

Signatures are typed: ``pointer(ctypes.c_float)`` is ``ctypes.POINTER(c_float)`` taking raw addresses
(``Tensor.data_ptr()``), ``None`` or ``ctypes`` arrays, converted like ``c_void_p`` (no extra cost per call).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised between processes (the atomic renames stay)
    fcntl = None

NATIVE_DIR = Path(__file__).resolve().with_name("native")
# reassociation lets the compiler vectorise reductions (sums in a different order); no finite-math assumptions
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-mprefer-vector-width=512", "-fopenmp-simd", "-fPIC", "-std=c99")
PRECISIONS = {"f32": (ctypes.c_float, "-DCLMEM_DOUBLE=0"), "f64": (ctypes.c_double, "-DCLMEM_DOUBLE=1")}
TIMEOUT_S = 300
Signatures = Callable[[type], Dict[str, List[type]]]


class NativeBuildError(RuntimeError):
    """A kernel library that could not be built or loaded: ``source``, the compiler's ``first_line`` and ``stderr``.

    The message's first line names the source and the first error line; the compiler's stderr follows."""

    def __init__(self, source: Path, first_line: str, stderr: str = ""):
        self.source, self.first_line, self.stderr = Path(source), first_line, stderr
        detail = "\n".join(stderr.strip().splitlines()[:40])
        super().__init__(f"building {self.source}: {first_line}" + (f"\n{detail}" if detail else ""))


@functools.lru_cache(maxsize=None)
def pointer(ctype: type) -> type:
    """``ctypes.POINTER(ctype)`` whose arguments may be raw addresses, ``None`` or ``ctypes`` arrays (see module)."""
    base = ctypes.POINTER(ctype)
    return type(f"{base.__name__}_address", (base,), {"from_param": ctypes.c_void_p.from_param})


def find_compiler() -> Optional[List[str]]:
    """The C compiler's command (``$CC`` split like a shell word list, else ``cc``, ``gcc``, ``clang``) or ``None``."""
    if os.environ.get("CC"):
        command = shlex.split(os.environ["CC"])
        return command if command and shutil.which(command[0]) else None
    found = next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)
    return [found] if found else None


@functools.lru_cache(maxsize=8)
def compiler_version(compiler: tuple) -> str:
    """``compiler --version`` output (part of the cache key); a ``NativeBuildError`` when it does not run."""
    try:
        done = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeBuildError(Path(compiler[0]), f"the C compiler does not run: {err}") from err
    if done.returncode != 0:
        raise NativeBuildError(Path(compiler[0]), "`--version` failed: " + first_error(done.stderr), done.stderr)
    return done.stdout.strip()


def _cpu_key() -> str:
    """CPU model and flags (the library is built with ``-march=native``)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(line for line in lines if line.startswith(("model name", "flags")))[:4000]
    except OSError:
        return platform.processor() + platform.machine()


def source_files(name: str, directory: Path = NATIVE_DIR) -> List[Path]:
    """``<name>.c`` and every header in ``directory`` (all of them feed the key)."""
    return [Path(directory, f"{name}.c"), *sorted(Path(directory).glob("*.h"))]


def cache_key(sources: Sequence[Path], flags: Sequence[str], compiler: Sequence[str], version: str) -> str:
    """SHA-256 (hex) of the sources' names and bytes, the flags, the compiler command and version, and the CPU."""
    digest = hashlib.sha256()
    for part in [*(f"{p.name}\0{p.read_text()}" for p in sources), *flags, *compiler, version, _cpu_key()]:
        digest.update(part.encode() + b"\0\1")
    return digest.hexdigest()


def first_error(stderr: str) -> str:
    """The first line of compiler output that reports an error (else the first non-empty line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if re.search(r"\berror\b", line, re.IGNORECASE)), lines[0] if lines else
                "the compiler failed without a message")


def _run_all(commands: List[List[str]], source: Path) -> None:
    """Run the commands at once; the first failure as a ``NativeBuildError`` (the compiler's stderr kept)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
    try:
        stderrs = [proc.communicate(timeout=TIMEOUT_S)[1] for proc in procs]
    except subprocess.TimeoutExpired as err:
        raise NativeBuildError(source, f"the compiler ran past {TIMEOUT_S} s") from err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, err in zip(procs, stderrs):
        if proc.returncode != 0:
            raise NativeBuildError(source, first_error(err), err)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(library: Path, key: str) -> bool:
    """Whether ``library`` and its JSON record exist, the record holds ``key`` and the library's SHA-256 matches."""
    try:
        record = json.loads(library.with_suffix(".json").read_text())
        return record.get("key") == key and library.is_file() and record.get("sha256") == _sha256(library)
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(compiler: List[str], source: Path, flags: Sequence[str], out: Path) -> None:
    """Both precisions' objects (in parallel), then the shared library ``out``."""
    objects = [out.with_name(f"{source.stem}_{suffix}.o") for suffix in PRECISIONS]
    _run_all([[*compiler, *flags, define, "-c", str(source), "-o", str(obj)]
              for obj, (_, define) in zip(objects, PRECISIONS.values())], source)
    _run_all([[*compiler, "-shared", *map(str, objects), "-o", str(out), "-lm"]], source)


def build(name: str, directory: Path = NATIVE_DIR, compiler: Optional[List[str]] = None,
          cache: Optional[Path] = None, flags: Sequence[str] = FLAGS) -> Path:
    """The library of ``directory/<name>.c``: the cached one if its key and hash match, else built now."""
    source = Path(directory, f"{name}.c")
    compiler = compiler or find_compiler()
    if compiler is None:
        raise NativeBuildError(source, "no C compiler found ($CC, cc, gcc, clang)")
    key = cache_key(source_files(name, directory), flags, compiler, compiler_version(tuple(compiler)))
    cache = Path(cache or os.environ.get("CLMEM_NATIVE_CACHE") or Path.home() / ".cache" / "clmem" / "native")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{key[:16]}.so"
    with _locked(cache / f"{name}.lock"):
        if cached(target, key):
            return target
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            lib = Path(tmp, target.name)
            _compile(compiler, source, flags, lib)
            record = Path(tmp, "record.json")
            record.write_text(json.dumps({"key": key, "sha256": _sha256(lib), "source": str(source),
                                          "flags": list(flags), "compiler": compiler}, indent=1))
            os.replace(lib, target)
            os.replace(record, target.with_suffix(".json"))
    return target


def bind(lib: ctypes.CDLL, signatures: Signatures) -> ctypes.CDLL:
    """Set ``argtypes`` (``signatures(c_float)`` / ``signatures(c_double)``) and ``restype = None`` (every kernel
    returns ``void``) on each function's ``_f32`` and ``_f64`` symbol."""
    for suffix, (real, _) in PRECISIONS.items():
        for function, argtypes in signatures(real).items():
            symbol = getattr(lib, f"{function}_{suffix}")
            symbol.argtypes, symbol.restype = list(argtypes), None
    return lib


def load_library(name: str, signatures: Signatures, directory: Path = NATIVE_DIR) -> Optional[ctypes.CDLL]:
    """Build (or find cached) and load ``<name>.c`` with typed signatures; ``None`` or a ``NativeBuildError`` as the
    module docstring says."""
    if os.environ.get("CLMEM_NATIVE", "1") == "0":
        return None
    require = os.environ.get("CLMEM_REQUIRE_NATIVE", "0") == "1"
    if find_compiler() is None and not require:
        return None
    try:
        path = build(name, directory)
        try:
            return bind(ctypes.CDLL(str(path)), signatures)
        except (OSError, AttributeError) as err:
            raise NativeBuildError(Path(directory, f"{name}.c"), f"loading {path} failed: {err}") from err
    except NativeBuildError as err:
        if require:
            raise
        warnings.warn(f"{err}\nclmem uses its torch-op path instead of the C kernels (CLMEM_NATIVE=0 selects it "
                      "without this warning; CLMEM_REQUIRE_NATIVE=1 makes this an error)", RuntimeWarning,
                      stacklevel=3)
        return None
