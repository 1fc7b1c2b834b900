"""Editing a saved model folder as the tests need it (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path


def resign(folder: str | Path) -> None:
    """Record ``tensors.pt``'s checksum in ``meta.json``, as a save would, after a test has edited the tensors.

    The load's checksum check then passes and its other checks (or a hostile file's payload) are reached, as
    with an attacker who edits both files.
    """
    from bayesgen.io import file_sha256

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["tensors_sha256"] = file_sha256(folder / "tensors.pt")
    (folder / "meta.json").write_text(json.dumps(meta))
