"""Where datasets live and the driver-side checks that they are there (standard library only).

Every check raises a one-line ``FileNotFoundError`` naming the expected path; clmem never downloads. Benchmarks
name their check in the registry (meta ``preflight``), so ``clmem validate`` checks data files without
importing torch (see :mod:`clmem.manifest`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = [
    "BABI_LAYOUTS", "MNIST_FILES", "PREFLIGHT", "preflight", "babi_file", "babi_root", "check_babi", "check_mnist", "check_mnist_root",
    "check_omniglot", "default_data_root", "default_omniglot_root", "parse_groups", "read_character_index",
    "require_file", "split_list",
]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
BABI_LAYOUTS = ("en", "en-10k")
OMNIGLOT_FILE = "images_background.npz"
#: Checks by benchmark name for modules that do not declare meta ``preflight`` (such entries are looked up for
#: real by ``clmem validate``, see :mod:`clmem.manifest`); new benchmarks declare ``preflight=`` instead.
PREFLIGHT: dict = {}


def preflight(section: dict) -> None:
    """Fail early (``FileNotFoundError``) when a resolved benchmark section's data is absent: the check its
    registration names (meta ``preflight``), if any."""
    from clmem.registries import BENCHMARKS

    check = BENCHMARKS.get(section["name"], "benchmark.name").meta.get("preflight") or PREFLIGHT.get(section["name"])
    if check is not None:
        check(section)


def default_data_root(name: str) -> str:
    """``$CLMEM_DATA/<name>`` when ``CLMEM_DATA`` is set, else ``./data/<name>``."""
    return str(Path(os.environ.get("CLMEM_DATA", "data")) / name)


def check_mnist_root(dataset_root: Union[str, os.PathLike]) -> Path:
    """Return the MNIST root, or raise ``FileNotFoundError`` naming what is missing.

    Expects torchvision's layout ``<root>/MNIST/raw/<idx file>`` (unpacked). Checking first means
    a missing dataset fails at once rather than starting a download that hangs offline.
    """
    root = Path(dataset_root).expanduser()
    raw = root / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST not found: expected {raw}/{missing[0]} (torchvision layout <root>/MNIST/raw/); "
            f"set benchmark.dataset_root or CLMEM_DATA to a folder holding MNIST; clmem never downloads"
        )
    return root


def check_mnist(section: dict) -> None:
    """Preflight of the MNIST benchmarks (``dataset_root`` or ``$CLMEM_DATA/mnist``)."""
    check_mnist_root(section.get("dataset_root") or default_data_root("mnist"))


# ------------------------------------------------------------------------------------------- bAbI
def split_list(text: str, what: str) -> list[str]:
    """``"a, b,c"`` → ``["a", "b", "c"]``; an empty list raises a ``ValueError`` naming ``what``."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def parse_groups(tasks: str, groups: str | None) -> list[list[int]]:
    """Experiences as lists of bAbI task numbers: ``groups`` ``"1,2;6;7,15"`` (``;`` between experiences), or
    one experience per task of ``tasks`` ``"1,2,6"``."""
    try:
        if groups:
            out = [[int(t) for t in split_list(g, "benchmark.groups")] for g in str(groups).split(";") if g.strip()]
        else:
            out = [[int(t)] for t in split_list(tasks, "benchmark.tasks")]
    except ValueError as err:
        if str(err).startswith("benchmark."):
            raise
        out = []
    flat = [t for g in out for t in g]
    if not out or len(set(flat)) != len(flat) or any(not 1 <= t <= 20 for t in flat):
        raise ValueError(f"benchmark.groups: expected distinct bAbI tasks in 1..20, got {groups or tasks!r}")
    return out


def babi_root(path: Union[str, os.PathLike, None] = None) -> Path:
    """``path`` if given, else ``$CLMEM_DATA/babi`` (``data/babi`` when ``CLMEM_DATA`` is unset)."""
    if path is not None:
        return Path(path).expanduser()
    return Path(os.environ.get("CLMEM_DATA", "data")).expanduser() / "babi"


def babi_file(task: int, split: str, root: Union[str, os.PathLike, None] = None, layout: str = "en") -> Path:
    """The file of ``task`` (1–20) and ``split`` (train/test); a missing file raises a one-line
    ``FileNotFoundError`` naming the expected path."""
    if split not in ("train", "test"):
        raise ValueError(f"bAbI split: expected 'train' or 'test', got {split!r}")
    if layout not in BABI_LAYOUTS:
        raise ValueError(f"bAbI layout: expected one of {BABI_LAYOUTS}, got {layout!r}")
    if isinstance(task, bool) or not isinstance(task, int) or not 1 <= task <= 20:
        raise ValueError(f"bAbI task: expected an int in [1, 20], got {task!r}")
    folder = babi_root(root) / layout
    found = sorted(folder.glob(f"qa{task}_*_{split}.txt")) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"bAbI task {task} ({split}) not found: expected {folder}/qa{task}_*_{split}.txt "
                                f"(pass the bAbI root or set CLMEM_DATA to a folder holding babi/{layout}/)")
    return found[0]


def check_babi(section: dict) -> None:
    """Preflight of the bAbI benchmarks: every requested task's files exist under ``data_root`` (none: generated)."""
    if section.get("data_root") is None:
        return  # generated offline
    for group in parse_groups(section.get("tasks", "1"), section.get("groups")):
        for task in group:
            for split in ("train", "test"):
                babi_file(task, split, section["data_root"], section.get("layout", "en"))


# --------------------------------------------------------------------------------------- Omniglot
def default_omniglot_root() -> Path:
    """``$CLMEM_DATA/omniglot``, else ``shared/data/omniglot`` beside the checkout."""
    return Path(os.environ.get("CLMEM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "omniglot"


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot file not found: {path} ({what})")
    return path


def read_character_index(root: Union[str, os.PathLike]) -> list[tuple[str, str, str, int]]:
    """``character_index.tsv`` rows as ``(npz, alphabet, character, npz_row)``, in file order."""
    index = require_file(Path(root) / "character_index.tsv", "expected the Omniglot folder with character_index.tsv")
    out = []
    for line in index.read_text().splitlines()[1:]:
        if line.strip():
            _, npz, alphabet, character, row = line.split("\t")
            out.append((npz, alphabet, character, int(row)))
    return out


def check_omniglot(section: dict) -> None:
    """Preflight of the Omniglot episodes: the background npz and the character index exist."""
    root = Path(section.get("data_root") or default_omniglot_root())
    read_character_index(root)
    require_file(root / OMNIGLOT_FILE, "expected images_background.npz; set benchmark.data_root or CLMEM_DATA")
