"""The registry manifest: ``clmem validate`` / ``clmem list`` answer from a snapshot of the registries'
declarations without importing torch or Avalanche, with the same answers as the real registries."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clmem import manifest
from clmem.catalog import BENCHMARKS, MODELS, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
BAD_FILES = ROOT / "tests" / "test_bad_files.py"


def _same_meta(decoded, real) -> bool:
    if isinstance(decoded, manifest.Ref):
        return decoded.resolve() is real
    if callable(decoded) and type(decoded).__name__ == "_Built":
        return decoded() is real()
    if isinstance(decoded, dict):
        return decoded.keys() == real.keys() and all(_same_meta(decoded[k], real[k]) for k in decoded)
    return decoded == real


def test_snapshot_keeps_every_entry_and_decodes_to_the_real_declarations():
    data = manifest.snapshot()
    opaque = [(kind, e["name"]) for kind, r in data["registries"].items() for e in r["entries"] if e.get("opaque")]
    assert opaque == [], f"entries the manifest cannot hold (use plain data, classes or module-level functions " \
                         f"in meta, and meta preflight= instead of the PREFLIGHT dict): {opaque}"
    data = json.loads(json.dumps(data))  # what the cache file holds
    for registry in (BENCHMARKS, MODELS, STRATEGIES):
        entries = data["registries"][registry.kind]["entries"]
        assert [e["name"] for e in entries] == registry.names()
        for raw in entries:
            decoded, real = manifest._decode_entry(registry, raw), registry.get(raw["name"])
            assert decoded.options == real.options and decoded.description == real.description
            meta = dict(real.meta)
            if isinstance(meta.get("config"), type):
                meta.setdefault("config_sizes", {"input_size": 1, "output_size": 1})
            assert _same_meta(decoded.meta, meta), raw["name"]


def test_source_key_changes_with_any_source_file(tmp_path):
    for package in ("clmem", "strategies"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    before = manifest.source_key(tmp_path)
    assert before == manifest.source_key(tmp_path)
    with open(tmp_path / "strategies" / "features.py", "a") as handle:
        handle.write("\n# changed\n")
    assert manifest.source_key(tmp_path) != before
    assert manifest.cache_file(before) != manifest.cache_file(manifest.source_key(tmp_path))


_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
from clmem.cli import main
spec = importlib.util.spec_from_file_location("bad_files", sys.argv[1])
bad = importlib.util.module_from_spec(spec); spec.loader.exec_module(bad)
out, tmp = {}, Path(sys.argv[2])
good = tmp / "good.yaml"; good.write_text(bad.BASE)
out["good"] = [main(["validate", str(good)]), "torch" in sys.modules, "avalanche" in sys.modules]
import io, contextlib
for ident, content, path, expected in bad.CASES:
    f = bad.write(tmp, ident, content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["validate", str(f)])
    out[ident] = [rc, err.getvalue(), path, expected]
print(json.dumps(out))
"""


def test_validate_from_the_manifest_needs_no_torch_and_refuses_every_bad_file(tmp_path):
    env = {**os.environ, "CLMEM_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("CLMEM_NO_MANIFEST", None)
    subprocess.run([sys.executable, "-m", "clmem", "list"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert list((tmp_path / "cache").glob("manifest-*.json")), "clmem list writes the manifest"
    files = tmp_path / "files"
    files.mkdir()
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(BAD_FILES), str(files)], cwd=files, env=env,
                          check=True, capture_output=True, text=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("good") == [0, False, False]  # validated, and neither torch nor Avalanche was imported
    assert len(out) >= 70
    for ident, (rc, err, path, expected) in out.items():
        assert rc == 2, (ident, err)
        assert len(err.strip().splitlines()) == 1 and path in err and expected in err, (ident, err)
