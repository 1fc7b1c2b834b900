"""The model registry: every model is registered once, and each registered model has all its pieces on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bayesgen import registry
from bayesgen.registry import MODELS, ModelEntry

ROOT = Path(__file__).resolve().parents[1]


def missing_pieces(root: Path, models: dict[str, ModelEntry], tour_specs: tuple[str, ...]) -> list[str]:
    """What the checkout at ``root`` lacks for the ``models`` registered, and the specs naming a model not in it.

    Discovers the pieces on disk: ``models/*.toml`` (by their ``[run] model``), ``tutorials/*.py``,
    ``tests/test_*.py`` and the modules of ``bayesgen/models/``.
    """
    specs = {
        path.stem: tomllib.loads(path.read_text()).get("run", {}).get("model")
        for path in sorted((root / "models").glob("*.toml"))
    }
    tutorials = {path.stem for path in (root / "tutorials").glob("*.py")}
    tests = {path.stem for path in (root / "tests").glob("test_*.py")}
    modules = {
        f"bayesgen.models.{path.stem}"
        for path in (root / "bayesgen" / "models").glob("*.py")
        if not path.stem.startswith("_")
    }
    modules |= {
        f"bayesgen.models.{path.parent.name}"
        for path in (root / "bayesgen" / "models").glob("*/__init__.py")
        if not path.parent.name.startswith("_")
    }
    problems = []
    for name, entry in models.items():
        if entry.name != name:
            problems.append(f"{name}: registered under another name than its own ({entry.name!r})")
        if f"test_{name}" not in tests:
            problems.append(f"{name}: no test file tests/test_{name}.py")
        if entry.tutorial not in tutorials:
            problems.append(f"{name}: no tutorial tutorials/{entry.tutorial}.py")
        if name not in specs.values():
            problems.append(f"{name}: no spec in models/*.toml with [run] model = {name!r}")
        if specs.get(entry.tour_spec) != name:
            problems.append(f"{name}: its tour spec models/{entry.tour_spec}.toml is missing or fits another model")
        if entry.tour_spec not in tour_specs:
            problems.append(f"{name}: the tour does not fit its spec {entry.tour_spec!r}")
        if entry.module not in modules:
            problems.append(f"{name}: its estimator's module {entry.module} is not under bayesgen/models/")
    for stem, model in specs.items():
        if model not in models:
            problems.append(f"models/{stem}.toml names model {model!r}, which is not registered")
    registered = {entry.module for entry in models.values()}
    for module in sorted(modules - registered):
        problems.append(f"{module} is a model module without a registry entry")
    return problems


def test_every_registered_model_has_its_module_spec_test_tutorial_and_tour_entry():
    from bayesgen.tour import TOUR_SPECS

    assert missing_pieces(ROOT, MODELS, TOUR_SPECS) == []
    assert TOUR_SPECS == tuple(entry.tour_spec for entry in MODELS.values())


def test_the_coverage_check_names_every_missing_piece(tmp_path):
    for folder in ("models", "tutorials", "tests", "bayesgen/models"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "models" / "stray.toml").write_text('[run]\nmodel = "unregistered"\n')
    (tmp_path / "bayesgen" / "models" / "orphan.py").write_text("")
    (tmp_path / "bayesgen" / "models" / "_base.py").write_text("")
    entry = ModelEntry(
        "new",
        estimator="bayesgen.models.new:New",
        spec_fit="bayesgen.models.new:fit_new_spec",
        title="New",
        description="",
        data_keys=(),
        tour_spec="new_demo",
    )
    problems = missing_pieces(tmp_path, {"new": entry}, ())
    assert problems == [
        "new: no test file tests/test_new.py",
        "new: no tutorial tutorials/new.py",
        "new: no spec in models/*.toml with [run] model = 'new'",
        "new: its tour spec models/new_demo.toml is missing or fits another model",
        "new: the tour does not fit its spec 'new_demo'",
        "new: its estimator's module bayesgen.models.new is not under bayesgen/models/",
        "models/stray.toml names model 'unregistered', which is not registered",
        "bayesgen.models.orphan is a model module without a registry entry",
    ]
    for path in ("tests/test_new.py", "tutorials/new.py", "bayesgen/models/new.py"):
        (tmp_path / path).write_text("")
    (tmp_path / "models" / "new_demo.toml").write_text('[run]\nmodel = "new"\n')
    assert missing_pieces(tmp_path, {"new": entry}, ("new_demo",)) == [
        "models/stray.toml names model 'unregistered', which is not registered",
        "bayesgen.models.orphan is a model module without a registry entry",
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_entry_names_its_estimator_whose_model_name_is_the_key(name):
    import bayesgen.models
    from bayesgen.models import BayesianEstimator

    entry = MODELS[name]
    cls = entry.estimator_class()
    assert issubclass(cls, BayesianEstimator) and cls.__module__ == entry.module
    assert cls._model_name == name
    assert registry.entry_for(cls) is entry
    assert getattr(bayesgen.models, cls.__name__) is cls  # public, as bayesgen.models.<Class>
    assert callable(entry.fit_recipe())
    # The spec recipe lives with its model: the estimator's module, not a module that lists every model.
    assert entry.spec_fit.partition(":")[0] == entry.module
    assert entry.fit_recipe().__module__ == entry.module


def test_entries_agree_with_the_spec_checks_and_the_estimators():
    from bayesgen.runs.spec import DATA_COMMON_KEYS, REPORT_COUNTS, REPORT_KEYS

    owners: dict[str, str] = {}
    for name, entry in MODELS.items():
        assert entry.report_keys <= REPORT_KEYS, name
        assert set(entry.smoke_report) <= entry.report_keys & set(REPORT_COUNTS), name
        assert not entry.data_keys & DATA_COMMON_KEYS, name
        for key in entry.report_keys:
            assert owners.setdefault(key, name) == name, f"[report] {key} is claimed by {owners[key]} and {name}"
        # An amortised model trains in epochs of minibatches; the others run num_steps of SVI (or none).
        params = entry.estimator_class()._param_names()
        assert ("num_epochs" in params) == entry.amortised, name


def test_a_spec_naming_an_unregistered_model_is_refused_with_the_registered_ones(tmp_path):
    from bayesgen.runs.spec import load_spec

    path = tmp_path / "bad.toml"
    path.write_text('[run]\nmodel = "prodlda"\n[data]\nsource = "x.csv"\n')
    with pytest.raises(ValueError, match=r"unknown model 'prodlda'; known models are \['ab_test', 'anomaly'"):
        load_spec(path)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.get("nope")
    assert registry.get("topic") is MODELS["topic"] and registry.names() == tuple(MODELS)
    assert registry.entry_for(object()) is None


def test_spec_keys_come_from_the_models_entry(tmp_path):
    from bayesgen.runs.spec import load_spec

    path = tmp_path / "s.toml"
    path.write_text('[run]\nmodel = "vae"\n[data]\nsource = "x.csv"\nmax_train_rows = 10\n[report]\niwae_rows = 5\n')
    assert load_spec(path)["data"]["max_train_rows"] == 10
    path.write_text('[run]\nmodel = "topic"\n[data]\nsource = "x.csv"\nmax_train_rows = 10\n')
    with pytest.raises(ValueError, match=r"unknown keys \['max_train_rows'\] in \[data\] for model 'topic'"):
        load_spec(path)
    path.write_text('[run]\nmodel = "topic"\n[data]\nsource = "x.csv"\n[report]\niwae_rows = 5\n')
    with pytest.raises(ValueError, match="iwae_rows is read by model 'vae' only, not by 'topic'"):
        load_spec(path)


def test_smoke_spec_caps_only_the_counts_of_the_models_own_report_keys():
    from bayesgen.runs.spec import load_spec
    from bayesgen.tour import smoke_spec, specs_dir

    vae = smoke_spec(load_spec(specs_dir() / f"{MODELS['vae'].tour_spec}.toml"))["report"]
    assert vae["iwae_samples"] <= 20 and vae["iwae_rows"] <= 100
    topic = smoke_spec(load_spec(specs_dir() / f"{MODELS['topic'].tour_spec}.toml"))["report"]
    assert not {"iwae_samples", "iwae_rows"} & set(topic)


def test_report_section_takes_the_title_and_description_from_the_entry(tmp_path):
    from bayesgen.report import write_report

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"model": "topic", "name": "t"}))
    write_report([folder], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert f"<h2>{MODELS['topic'].title} — t</h2>" in page and MODELS["topic"].description in page


def test_importing_the_registry_loads_no_torch():
    code = (
        "import json, sys\nfrom bayesgen import registry\n"
        "entries = [(e.name, e.estimator, e.title) for e in registry.MODELS.values()]\n"
        "print(json.dumps(sorted(m for m in ('torch', 'pyro', 'pandas', 'numpy') if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_common_api_suite_runs_every_registered_model():
    from test_common_api import ESTIMATORS

    made = {param.id: param.values[0]() for param in ESTIMATORS}
    assert set(made) == set(MODELS)
    for name, estimator in made.items():
        assert registry.entry_for(estimator) is MODELS[name], name
