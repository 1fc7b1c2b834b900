"""Run specs, run folders and reproduction under their former name: every name re-exported from :mod:`bayesgen.runs`.

The code lives in :mod:`bayesgen.runs.spec` (reading and checking a TOML spec),
:mod:`bayesgen.runs.folder` (a run folder, written whole or not at all) and
:mod:`bayesgen.runs.reproduce`; each model's spec recipe (``fit_<model>_spec``)
lives in its model's module. ``from bayesgen.specs import run_spec`` keeps working;
a recipe named here is imported (with its model, torch and Pyro) on first use.
"""

from __future__ import annotations

from typing import Any

from bayesgen import registry
from bayesgen.runs.folder import (  # noqa: F401 - CHECKPOINT_NAME is public here, outside __all__
    CHECKPOINT_NAME,
    RunInterrupted,
    RunOutput,
    default_run_folder,
    package_versions,
    run_spec,
)
from bayesgen.runs.reproduce import ReproduceResult, reproduce
from bayesgen.runs.spec import (  # noqa: F401 - the spec's key sets are public here, outside __all__
    DATA_COMMON_KEYS,
    MAX_SPEC_DEPTH,
    REPORT_COUNTS,
    REPORT_KEYS,
    RUN_KEYS,
    SECTIONS,
    SpecFit,
    check_run_name,
    fit_spec,
    load_spec,
)

__all__ = [
    "load_spec",
    "check_run_name",
    "fit_spec",
    "SpecFit",
    "run_spec",
    "RunOutput",
    "RunInterrupted",
    "default_run_folder",
    "package_versions",
    "reproduce",
    "ReproduceResult",
]


def __getattr__(name: str) -> Any:
    """A model's spec recipe (``fit_<model>_spec``, named by its registry entry), imported on first use."""
    for entry in registry.MODELS.values():
        if entry.spec_fit.partition(":")[2] == name:
            return entry.fit_recipe()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
