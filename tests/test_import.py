"""Importing bayesgen is cheap: public names load their modules on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_LAZY = r"""
import json, sys
heavy = ("torch", "pyro", "arviz", "pandas", "matplotlib")
report = {}
import bayesgen
report["import bayesgen"] = sorted(m for m in heavy if m in sys.modules)
report["dir"] = sorted(set(bayesgen.__all__) - set(dir(bayesgen)))
from bayesgen.models import BetaBinomialTest
from bayesgen.registry import MODELS
report["from bayesgen.models import BetaBinomialTest"] = sorted(
    entry.name for entry in MODELS.values() if entry.module in sys.modules)
import bayesgen.augment  # binds the module bayesgen.augment as an attribute of the package
from bayesgen import augment
report["augment"] = [callable(augment), bayesgen.augment is augment, augment.__module__]
from bayesgen import VAE, run_svi, to_datatree
report["names"] = [VAE.__module__, run_svi.__module__, to_datatree.__module__]
report["unresolved"] = [name for name in bayesgen.__all__ if getattr(bayesgen, name, None) is None]
report["submodule"] = getattr(getattr(bayesgen, "plots", None), "__name__", None)
try:
    bayesgen.no_such_name
except AttributeError as err:
    report["missing"] = str(err)
print(json.dumps(report))
"""


def test_import_bayesgen_loads_no_torch_until_a_name_is_used():
    proc = subprocess.run([sys.executable, "-c", _LAZY], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["import bayesgen"] == [], f"import bayesgen imported {report['import bayesgen']}"
    assert report["dir"] == []
    assert report["from bayesgen.models import BetaBinomialTest"] == ["ab_test"]
    assert report["augment"] == [True, True, "bayesgen.augment"]
    assert report["names"] == ["bayesgen.models.vae", "bayesgen.infer", "bayesgen.arviz"]
    assert report["unresolved"] == []
    assert report["submodule"] == "bayesgen.plots"
    assert report["missing"] == "module 'bayesgen' has no attribute 'no_such_name'"


def test_a_saved_model_loads_before_its_module_is_imported(tmp_path):
    # Saved here; BayesianEstimator.load in a fresh interpreter, where the estimator's module has not been imported.
    from bayesgen import BetaBinomialTest

    folder = str(tmp_path / "m")
    BetaBinomialTest(method="exact").fit([3, 4], [10, 10]).save(folder)
    load = (
        "import sys; from bayesgen.models import BayesianEstimator; "
        f"m = BayesianEstimator.load({folder!r}); "
        "print(type(m).__name__, 'bayesgen.models.ab_test' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BetaBinomialTest", "True"]


def test_bayesgen_specs_keeps_every_name_it_re_exports_from_the_run_layer():
    import bayesgen.runs.folder as folder
    import bayesgen.runs.reproduce as reproduce
    import bayesgen.runs.spec as spec
    import bayesgen.specs as specs
    from bayesgen.registry import MODELS

    homes = {
        spec: ["load_spec", "check_run_name", "fit_spec", "SpecFit", "SECTIONS", "RUN_KEYS", "DATA_COMMON_KEYS"]
        + ["REPORT_COUNTS", "REPORT_KEYS", "MAX_SPEC_DEPTH"],
        folder: [
            "run_spec",
            "RunOutput",
            "RunInterrupted",
            "default_run_folder",
            "package_versions",
            "CHECKPOINT_NAME",
        ],
        reproduce: ["reproduce", "ReproduceResult"],
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(specs, name) is getattr(module, name), name
    assert set(specs.__all__) <= {name for names in homes.values() for name in names}
    for entry in MODELS.values():  # each model's recipe, from its own module
        name = entry.spec_fit.partition(":")[2]
        assert getattr(specs, name) is entry.fit_recipe(), name
    with pytest.raises(AttributeError, match="has no attribute 'fit_nothing_spec'"):
        getattr(specs, "fit_nothing_spec")  # noqa: B009 - the attribute access is what is tested


def test_a_progress_bar_starts_its_clock_after_the_first_optimisers_one_off_import():
    # The first torch optimiser of a process imports torch._dynamo (seconds); a progress bar that counted it
    # in its first step would show a rate and a time left several times too long.
    code = (
        "import sys\n"
        "from bayesgen.infer import _progress_bar\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "_progress_bar(True, 3, 0).close()\n"
        "print(before, 'torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
