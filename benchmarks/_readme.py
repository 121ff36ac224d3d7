"""Rewrite a script-produced block of README.md, between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_block(name: str, body: str, readme: Path = README) -> None:
    """Replace the text between the ``name`` markers with ``body``; the markers must be there already."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme.name}: expected the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body.strip()}\n{end}{tail}")
