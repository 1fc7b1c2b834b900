"""The run layer: a TOML spec in, a run folder out, and a check that the folder reproduces.

Three modules, one idea each, in the order data flows through them:

- :mod:`bayesgen.runs.spec`: read and check a run spec (TOML under ``models/``; reading one
  never executes code) and fit it with its model's spec recipe from :mod:`bayesgen.registry`.
- :mod:`bayesgen.runs.folder`: fit a spec and write its run folder, whole or not at all
  (:func:`~bayesgen.runs.folder.run_spec`; the files themselves in
  :func:`~bayesgen.runs.folder.write_run_folder`).
- :mod:`bayesgen.runs.reproduce`: re-run a run folder and compare the results with the original.

Each model's spec recipe (how a spec's data are loaded, the estimator fitted and the model's
report table built) lives in the model's own module and is named by its registry entry.
Importing this package imports none of the three modules; :mod:`bayesgen.specs` re-exports their
public names.
"""
