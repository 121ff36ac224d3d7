"""What the light commands import: `clmem compare` and `clmem ui` read MLflow only, so they must not
pay for torch and Avalanche (about 8 s on a 2-core machine) through the experiment catalog."""
import subprocess
import sys


def test_tracking_and_comparison_modules_do_not_import_torch_or_avalanche():
    code = ("import sys, clmem.cli, clmem.tracking, clmem.compare, clmem.report; "
            "print(sorted(m for m in ('torch', 'avalanche', 'clmem.catalog') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
