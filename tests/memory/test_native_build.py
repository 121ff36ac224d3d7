"""Building the C kernels (``_native_build``): the cache key, compiler errors, the cache check, typed signatures.

Tests that compile skip only where no C compiler is found; where one is found, a kernel library that does not build
fails ``test_kernels_build_where_a_compiler_exists`` (with the compiler's first error line).
"""

import ctypes
import fnmatch
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from clmem.memory import _native_build as build, _native_dnc, _native_link

NO_COMPILER = "no C compiler found ($CC, cc, gcc, clang): the kernels are optional there"
needs_compiler = pytest.mark.skipif(build.find_compiler() is None, reason=NO_COMPILER)
MODULES = {"link": _native_link, "dnc": _native_dnc}
TINY = """#include "clmem_native.h"
void EXPORT(scale)(int64_t n, real* x, double a) { for (int64_t i = 0; i < n; ++i) x[i] *= (real)a; }
"""


def tiny_signatures(real):
    return {"scale": [ctypes.c_int64, build.pointer(real), ctypes.c_double]}


def copy_sources(tmp_path: Path) -> Path:
    directory = tmp_path / "native"
    shutil.copytree(build.NATIVE_DIR, directory)
    return directory


def break_source(directory: Path, name: str = "link") -> int:
    """Put a syntax error after the includes of ``<name>.c``; its 1-based line number."""
    source = directory / f"{name}.c"
    lines = source.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("#include")) + 1
    lines.insert(at, "int broken = ;")
    source.write_text("\n".join(lines) + "\n")
    return at + 1


def test_cache_key_changes_with_source_headers_flags_and_compiler(tmp_path):
    directory = copy_sources(tmp_path)
    sources = build.source_files("link", directory)
    assert [p.name for p in sources] == ["link.c", "clmem_native.h", "vec.h"]
    key = build.cache_key(sources, build.FLAGS, ["cc"], "cc 1.0")
    assert key == build.cache_key(sources, build.FLAGS, ["cc"], "cc 1.0") and len(key) == 64
    assert build.cache_key(sources, (*build.FLAGS, "-DEXTRA=1"), ["cc"], "cc 1.0") != key
    assert build.cache_key(sources, build.FLAGS[1:], ["cc"], "cc 1.0") != key
    assert build.cache_key(sources, build.FLAGS, ["cc"], "cc 1.1") != key
    assert build.cache_key(sources, build.FLAGS, ["clang"], "cc 1.0") != key
    (directory / "link.c").write_text((directory / "link.c").read_text() + "/* edited */\n")
    edited = build.cache_key(sources, build.FLAGS, ["cc"], "cc 1.0")
    (directory / "clmem_native.h").write_text((directory / "clmem_native.h").read_text() + "\n")
    assert len({key, edited, build.cache_key(sources, build.FLAGS, ["cc"], "cc 1.0")}) == 3


def test_first_error_picks_the_error_line():
    stderr = "In file included from a.c:1:\nb.h: In function 'f':\nb.h:3:9: error: expected expression\n"
    assert build.first_error(stderr) == "b.h:3:9: error: expected expression"
    assert build.first_error("ld: cannot find -lfoo\n") == "ld: cannot find -lfoo"
    assert build.first_error("") == "the compiler failed without a message"


@needs_compiler
def test_broken_source_raises_with_the_compiler_line(tmp_path):
    directory = copy_sources(tmp_path)
    line = break_source(directory)
    with pytest.raises(build.NativeBuildError) as caught:
        build.build("link", directory, cache=tmp_path / "cache")
    err = caught.value
    assert err.source == directory / "link.c"
    assert re.search(rf"link\.c:{line}:\d+: error", err.first_line), err.first_line
    message = str(err).splitlines()
    assert message[0] == f"building {directory / 'link.c'}: {err.first_line}" and len(message) > 1
    assert list((tmp_path / "cache").glob("*.so")) == []


@needs_compiler
def test_failed_build_warns_once_then_torch_path_or_raises_when_required(tmp_path, monkeypatch):
    directory = copy_sources(tmp_path)
    break_source(directory)
    monkeypatch.setenv("CLMEM_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLMEM_REQUIRE_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning) as caught:
        assert build.load_library("link", _native_link.signatures, directory) is None
    assert len(caught) == 1 and "error" in str(caught[0].message).splitlines()[0]
    monkeypatch.setenv("CLMEM_REQUIRE_NATIVE", "1")
    with pytest.raises(build.NativeBuildError, match="link.c"):
        build.load_library("link", _native_link.signatures, directory)


def test_disabled_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEM_NATIVE", "0")
    monkeypatch.setenv("CLMEM_REQUIRE_NATIVE", "1")
    monkeypatch.setenv("CLMEM_NATIVE_CACHE", str(tmp_path / "cache"))
    assert build.load_library("link", _native_link.signatures) is None
    assert not (tmp_path / "cache").exists()


@needs_compiler
def test_cached_library_is_loaded_only_when_key_and_hash_match(tmp_path):
    directory = tmp_path / "native"
    directory.mkdir()
    shutil.copy(build.NATIVE_DIR / "clmem_native.h", directory)
    (directory / "tiny.c").write_text(TINY)
    cache = tmp_path / "cache"
    path = build.build("tiny", directory, cache=cache)
    record = path.with_suffix(".json")
    built = path.stat().st_mtime_ns, record.stat().st_mtime_ns
    assert build.build("tiny", directory, cache=cache) == path
    assert (path.stat().st_mtime_ns, record.stat().st_mtime_ns) == built  # the cached library, not rebuilt
    good = path.read_bytes()
    path.write_bytes(good + b"\0")  # a library that is not the one recorded
    assert not build.cached(path, record.read_text().split('"key": "')[1][:64])
    assert build.build("tiny", directory, cache=cache) == path and path.read_bytes() == good
    record.write_text(record.read_text().replace('"key": "', '"key": "0'))  # a record of another key
    before = record.stat().st_mtime_ns
    build.build("tiny", directory, cache=cache)
    assert record.stat().st_mtime_ns != before and build.cached(path, record.read_text().split('"key": "')[1][:64])
    lib = build.bind(ctypes.CDLL(str(path)), tiny_signatures)
    x32, x64 = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 4.0], dtype=torch.float64)
    lib.scale_f32(3, x32.data_ptr(), 2.0)
    lib.scale_f64(2, x64.data_ptr(), -3.0)
    assert x32.tolist() == [2.0, -4.0, 6.0] and x64.tolist() == [-1.5, -12.0]


def c_prototypes(source: Path, real: str):
    """``{name: [C parameter type]}`` of the ``EXPORT(name)`` definitions in ``source``, ``real`` substituted."""
    text = re.sub(r"/\*.*?\*/", " ", source.read_text(), flags=re.S)
    result = {}
    for name, params in re.findall(r"^void EXPORT\((\w+)\)\(([^)]*)\)", text, flags=re.M):
        types = []
        for param in params.split(","):
            words = [w for w in re.sub(r"\*", " * ", param).split() if w not in ("const", "restrict")]
            types.append(" ".join(words[:-1]).replace("real", real).replace(" *", "*"))
        result[name] = types
    return result


def c_name(argtype) -> str:
    """The C type a ``ctypes`` argument type stands for (``int64_t``, ``float*``, ``double**``, ...)."""
    names = {ctypes.c_int64: "int64_t", ctypes.c_double: "double", ctypes.c_float: "float"}
    if argtype in names:
        return names[argtype]
    assert issubclass(argtype, ctypes._Pointer), f"{argtype} is neither a number nor a typed pointer"
    return c_name(argtype._type_) + "*"


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("suffix", sorted(build.PRECISIONS))
def test_signatures_are_typed_and_match_the_c_prototypes(name, suffix):
    real = build.PRECISIONS[suffix][0]
    declared = MODULES[name].signatures(real)
    prototypes = c_prototypes(build.NATIVE_DIR / f"{name}.c", c_name(real))
    assert set(declared) == set(prototypes) and prototypes
    for function, argtypes in declared.items():
        assert [c_name(t) for t in argtypes] == prototypes[function], function
        assert ctypes.c_void_p not in argtypes


def test_kernels_build_where_a_compiler_exists():
    """Fails (not skips) when a compiler is found and a kernel library does not build or load."""
    if os.environ.get("CLMEM_NATIVE") == "0":
        pytest.skip("CLMEM_NATIVE=0 selects the torch-op path")
    if build.find_compiler() is None:
        pytest.skip(NO_COMPILER)
    for name, module in MODULES.items():
        build.build(name)  # a NativeBuildError here names the source and the compiler's first error line
        lib = module.kernels()
        assert lib is not None, f"{name}: built but not loaded"
        for function, argtypes in module.signatures(ctypes.c_float).items():
            for suffix in build.PRECISIONS:
                symbol = getattr(lib, f"{function}_{suffix}")
                assert symbol.restype is None and len(symbol.argtypes) == len(argtypes), f"{function}_{suffix}"


def test_package_data_ships_every_kernel_source():
    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["clmem.memory"]
    files = sorted(p.relative_to(build.NATIVE_DIR.parent).as_posix() for p in build.NATIVE_DIR.iterdir())
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), files
