"""Shared estimator base: fit through the one SVI runner, posterior, ArviZ, save/load.

Every bayesgen model is a plain Pyro model/guide pair plus an estimator
subclassing :class:`BayesianEstimator`. The estimator holds hyperparameters
from ``__init__`` (no work there), validates data in ``fit``, owns its Pyro
parameters in a private param-store state (so the user's global param store is
never touched and two fitted models coexist), and saves to a folder that loads
without executing code: tensors via ``torch.save``/``torch.load(weights_only=True)``
and metadata as JSON.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import bayesgen
from bayesgen._runtime import (
    check_count,
    check_flag,
    check_real,
    check_seed,
    check_threads,
    fresh_seed,
    is_out_of_memory,
    load_tensor_file,
    resolve_device,
    thread_count,
    to_numpy,
)
from bayesgen._typing import ModelFn, PathLikeStr
from bayesgen.infer import ConvergenceCheck, SVIResult, param_scope, run_svi

__all__ = ["BayesianEstimator", "NotFittedError", "ModelFileError", "NotEnoughMemoryError"]

MODEL_FORMAT = "bayesgen-model"
# 2: meta.json holds the SHA-256 of tensors.pt ("tensors_sha256"), checked at load. Version 1 files (no
# checksum) still load, with a logged warning that their tensors cannot be checked.
MODEL_FORMAT_VERSION = 2
_READABLE_FORMAT_VERSIONS = (1, 2)

logger = logging.getLogger(__name__)


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``."""


class ModelFileError(ValueError):
    """A saved-model folder is missing, corrupt, or holds another kind of model."""


class NotEnoughMemoryError(MemoryError):
    """A method asked the device (CPU or GPU) for more memory than it has: ask for less at once."""


def _allocation(err: BaseException) -> str:
    """What the allocator said, in a line: the size NumPy or torch's CPU allocator asked for, or the message's first
    line."""
    shape, dtype = getattr(err, "shape", None), getattr(err, "dtype", None)
    if isinstance(err, MemoryError) and shape is not None and hasattr(dtype, "itemsize"):  # NumPy's, with its array
        return f"it asked for {math.prod(shape) * dtype.itemsize / 2**30:,.1f} GiB"
    text = str(err).strip()
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if asked:
        return f"it asked for {int(asked.group(1)) / 2**30:,.1f} GiB"
    return text.splitlines()[0][:300] if text else type(err).__name__


def _explain_out_of_memory(fn: Any) -> Any:
    """Wrap an estimator method (or classmethod's function) so that an allocation failure becomes a
    :class:`NotEnoughMemoryError` naming the method and the way out, instead of an allocator's traceback,
    and so that an estimator given an int ``num_threads`` runs the method on that many torch threads."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with thread_count(_fixed_threads(self)):
                return fn(self, *args, **kwargs)
        except NotEnoughMemoryError:
            raise
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            owner = self if isinstance(self, type) else type(self)
            device = kwargs.get("device") if isinstance(self, type) else getattr(self, "device_", None)
            where = f" on {device}" if device is not None else ""
            raise NotEnoughMemoryError(
                f"{owner.__name__}.{fn.__name__}: not enough memory{where} ({_allocation(err)}). Ask for less "
                "at once: fewer rows or draws per call (num_samples), or a smaller batch_size"
            ) from err

    return method


def _fixed_threads(owner: Any) -> int | None:
    """An estimator's ``num_threads`` when it is a count (for every method), else None (``"auto"`` acts in
    the runner; an invalid value is reported by ``fit``'s checks)."""
    try:
        value = check_threads(getattr(owner, "num_threads", None))
    except ValueError:
        return None
    return None if value is None or isinstance(value, str) else value


def _explain_out_of_memory_in(cls: type) -> None:
    """Apply :func:`_explain_out_of_memory` to the public methods and classmethods ``cls`` itself defines."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if inspect.isfunction(value):
            setattr(cls, name, _explain_out_of_memory(value))
        elif isinstance(value, classmethod):
            setattr(cls, name, classmethod(_explain_out_of_memory(value.__func__)))


class BayesianEstimator:
    """Base class of bayesgen estimators.

    A public method (``load`` too) that runs out of memory raises :class:`NotEnoughMemoryError` (a ``MemoryError``)
    saying which method and what to ask for instead.

    Subclasses set ``_model_name`` (the model's key in :mod:`bayesgen.registry`) and implement:

    * ``_model_and_guide()`` → ``(model, guide)`` used for SVI and ArviZ;
    * ``_model_args()`` → ``(args, kwargs)`` for the fitted data;
    * ``_arviz_dims()`` → ``(dims, coords)``;
    * ``_get_extra_state()`` / ``_set_extra_state(meta, tensors)`` for save/load.
    """

    _model_name: ClassVar[str] = "base"
    _registry: ClassVar[dict[str, str]] = {}
    #: The runner's settings, checked alike in every estimator that has them. None passes where
    #: it is the setting's default, for ``seed`` (fresh randomness) and ``convergence_rtol`` (no
    #: convergence check), and for the names in ``_none_ok``.
    _shared_settings: ClassVar[dict[str, Any]] = {
        "num_steps": check_count,
        "num_epochs": check_count,
        "batch_size": check_count,
        "num_particles": check_count,
        "num_samples": check_count,
        "patience": check_count,
        "average_last": lambda v, name: check_count(v, name, minimum=0),
        "seed": check_seed,
        "learning_rate": lambda v, name: check_real(v, name, low=0.0),
        "final_lr_factor": lambda v, name: check_real(v, name, low=0.0, high=1.0, high_open=False),
        "convergence_rtol": lambda v, name: check_real(v, name, low=0.0, low_open=False),
        "validation_fraction": lambda v, name: check_real(v, name, low=0.0, high=1.0, low_open=False),
        "progress": check_flag,
        "num_threads": check_threads,
    }
    #: Shared settings for which this estimator also accepts None (beyond those whose default is None).
    _none_ok: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BayesianEstimator._registry[cls.__name__] = cls.__module__
        _explain_out_of_memory_in(cls)

    # ----------------------------------------------------------------- params
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters given to ``__init__``, as a dict (scikit-learn style)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_settings(self) -> None:
        """Check the settings by kind and range, naming a bad one, and resolve ``device``.

        ``fit`` calls it first and ``load`` on the saved settings. This checks the
        shared ones (``_shared_settings``); models extend it, calling it first.
        """
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        for name, check in self._shared_settings.items():
            if name not in defaults:
                continue
            value = getattr(self, name)
            if value is None and (defaults[name] is None or name in ("seed", "convergence_rtol", *self._none_ok)):
                continue
            check(value, name)
        self.device_ = resolve_device(getattr(self, "device", "auto"))

    def _method_seed(self, seed: int | None) -> int:
        """The seed a method draws with: ``None`` means the estimator's ``seed`` (the same draws on every
        call), and a fresh one when that is None too."""
        if seed is None:
            return fresh_seed() if self.seed is None else int(self.seed)
        return check_seed(seed, "seed")

    # ---------------------------------------------------------------- fitting
    def _check_fitted(self) -> None:
        if not hasattr(self, "losses_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) before using this method"
            )

    def _run_svi(
        self,
        *args: Any,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        data_size: int | None = None,
        num_steps: int | None = None,
        learning_rate: float | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> SVIResult:
        """Fit the estimator's model/guide with its inference hyperparameters.

        ``num_steps`` and ``learning_rate`` override the attributes of the same
        name (estimators that count epochs, or resolve an "auto" setting).
        ``*args`` and ``model_kwargs`` go to the model and guide; ``**kwargs``
        are further :func:`~bayesgen.infer.run_svi` options.
        """
        num_steps = int(self.num_steps if num_steps is None else num_steps)
        model, guide = self._model_and_guide()
        state: dict = {"params": {}, "constraints": {}}
        convergence = None
        if getattr(self, "convergence_rtol", None):
            # With a learning-rate schedule running, stopping early would cut the
            # schedule short; then convergence is reported but does not stop the fit.
            convergence = ConvergenceCheck(
                window=getattr(self, "convergence_window", 100),
                rtol=self.convergence_rtol,
                early_stop=getattr(self, "lr_schedule", None) is None,
            )
        result = run_svi(
            model,
            guide,
            *args,
            num_steps=num_steps,
            learning_rate=float(self.learning_rate if learning_rate is None else learning_rate),
            optimizer=getattr(self, "optimizer", "adam"),
            lr_schedule=getattr(self, "lr_schedule", None),
            final_lr_factor=getattr(self, "final_lr_factor", 0.1),
            loss=getattr(self, "loss", "trace"),
            num_particles=getattr(self, "num_particles", 1),
            vectorize_particles=getattr(self, "num_particles", 1) > 1,
            max_plate_nesting=getattr(self, "_max_plate_nesting", None),
            batch_size=getattr(self, "batch_size", None) if data_size is not None else None,
            data_size=data_size,
            device=self.device_,
            num_threads=getattr(self, "num_threads", "auto"),
            device_scope=False,  # bayesgen's models build every tensor from their data (and plates name it)
            seed=self.seed,
            param_state=state,
            convergence=convergence,
            progress=self.progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            average_last=min(int(getattr(self, "average_last", 0)), num_steps // 2),
            model_kwargs=model_kwargs,
            **kwargs,
        )
        self._param_state = result.param_state
        self.losses_ = result.losses
        self.converged_ = result.converged if convergence is not None else None
        self.n_steps_ = result.num_steps
        self.fit_seconds_ = result.elapsed_s
        return result

    def posterior(self, num_samples: int | None = None, *, seed: int | None = None) -> dict[str, Any]:
        """Posterior draws, in one shape for every model.

        Each model returns a dict of NumPy arrays named as its model's sample sites or transforms of them
        (ProdLDA's ``theta``, the softmax of its site ``logtheta``), every array with
        the draws on its first axis (``num_samples`` long); the same ``seed`` gives the same draws,
        and ``seed=None`` means the estimator's own. Further keyword-only arguments choose whose
        local latents are drawn (a VAE's ``X``, ProdLDA's ``docs``). :meth:`to_arviz` puts the same
        kind of draws in an ArviZ DataTree.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define posterior()")

    def _params_numpy(self) -> dict[str, Any]:
        """Constrained values of the fitted guide parameters, as NumPy arrays."""
        with param_scope(self._param_state):
            store = pyro.get_param_store()
            return {name: to_numpy(store.get_param(name)) for name in store.keys()}

    @property
    def params_(self) -> dict[str, Any]:
        """Fitted variational parameters (constrained), by Pyro param name."""
        self._check_fitted()
        return self._params_numpy()

    # ------------------------------------------------------------------ ArviZ
    def to_arviz(self, num_samples: int = 1000, *, seed: int | None = 0, prior: bool = False) -> Any:
        """Posterior, posterior predictive, log-likelihood and observed data as a DataTree.

        Parameters
        ----------
        num_samples : int, default 1000
            Guide draws, split into chains as :func:`bayesgen.arviz.to_datatree` does.
        seed : int or None, default 0
            None: the estimator's ``seed``.
        prior : bool, default False
            Add ``prior`` and ``prior_predictive`` groups.

        Returns
        -------
        xarray.DataTree
        """
        from bayesgen.arviz import to_datatree

        self._check_fitted()
        model, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        dims, coords = self._arviz_dims()
        return to_datatree(
            model,
            guide,
            *args,
            num_samples=num_samples,
            param_state=self._param_state,
            seed=self._method_seed(seed),
            dims=dims,
            coords=coords,
            prior=prior,
            parallel=getattr(self, "_arviz_parallel", True),
            attrs={"bayesgen_model": type(self).__name__, "bayesgen_version": bayesgen.__version__},
            unknown_dims="ignore",  # one dims table serves every variant (e.g. sites of other covariances)
            **kwargs,
        )

    def vi_diagnostic(self, num_samples: int = 2000, *, seed: int | None = 0, warn: bool = True) -> Any:
        """PSIS k-hat of the fitted guide against the model (see :func:`~bayesgen.diagnostics.khat.vi_khat`).

        Models that store only some rows for ArviZ (VAE, ProdLDA) are checked on those rows.
        """
        from bayesgen.diagnostics import vi_khat

        self._check_fitted()
        model, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        return vi_khat(
            model,
            guide,
            *args,
            num_samples=num_samples,
            param_state=self._param_state,
            max_plate_nesting=getattr(self, "_max_plate_nesting", None),
            seed=self._method_seed(seed),
            device=self.device_,
            warn=warn,
            **kwargs,
        )

    def nuts_check(
        self,
        num_samples: int = 1000,
        *,
        num_warmup: int = 500,
        num_chains: int = 2,
        seed: int = 0,
        tolerance: float = 0.1,
        target_accept_prob: float = 0.8,
        relabel: Any = None,
        progress: bool | None = None,
    ) -> Any:
        """Compare the fitted posterior with NUTS on the same model (:func:`~bayesgen.diagnostics.nuts.nuts_compare`).

        For small models only (the A/B test, a generator on a few features, an anomaly mixture on a small table).
        ``target_accept_prob``, ``relabel`` (a function of the draws that undoes label switching) and
        ``progress`` are passed to :func:`~bayesgen.diagnostics.nuts.nuts_compare`, whose advice names them.
        """
        from bayesgen.diagnostics import nuts_compare

        self._check_fitted()
        model, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        size = self._latent_size()
        if size > self._nuts_max_latents:
            raise ValueError(
                f"{type(self).__name__} has {size} latent numbers; NUTS is offered for models with at "
                f"most {self._nuts_max_latents} (fit fewer features, rows or classes to cross-check)"
            )
        return nuts_compare(
            model,
            guide,
            *args,
            param_state=self._param_state,
            num_samples=num_samples,
            num_warmup=num_warmup,
            num_chains=num_chains,
            seed=self._method_seed(seed),
            tolerance=tolerance,
            target_accept_prob=target_accept_prob,
            relabel=relabel,
            progress=progress,
            **kwargs,
        )

    _nuts_max_latents: ClassVar[int] = 1000
    _row_plate: ClassVar[str | None] = None

    def _latent_size(self) -> int:
        """How many latent numbers the fitted guide draws (what NUTS would sample)."""
        from pyro import poutine

        from bayesgen.infer import param_scope

        _, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        with param_scope(self._param_state), torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        return sum(
            int(s["value"].numel()) for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
        )

    def vi_diagnostic_rows(self, num_samples: int = 500, *, seed: int | None = 0, warn: bool = True) -> Any:
        """Per-row PSIS k-hat of an amortised guide (see :func:`~bayesgen.diagnostics.khat.vi_khat_rows`).

        Offered by models whose latent variables are all local to a data row
        (VAE, ProdLDA); checked on the rows stored for ArviZ.
        """
        from bayesgen.diagnostics import vi_khat_rows

        self._check_fitted()
        if self._row_plate is None:
            raise ValueError(
                f"{type(self).__name__} has global latent variables: per-row k-hat does not apply; use vi_diagnostic()"
            )
        model, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        return vi_khat_rows(
            model,
            guide,
            *args,
            plate=self._row_plate,
            num_samples=num_samples,
            param_state=self._param_state,
            max_plate_nesting=getattr(self, "_max_plate_nesting", 1),
            seed=self._method_seed(seed),
            device=self.device_,
            warn=warn,
            **kwargs,
        )

    def sbc_check(
        self,
        num_simulations: int = 100,
        *,
        num_posterior_samples: int = 99,
        num_steps: int | None = None,
        learning_rate: float | None = None,
        seed: int = 0,
        alpha: float = 0.01,
    ) -> Any:
        """Simulation-based calibration of this estimator's SVI fits (:func:`~bayesgen.diagnostics.calibration.sbc`).

        Simulates data sets of the fitted data's shape from the prior and refits
        the guide to each with the estimator's optimiser settings
        (``num_steps`` defaults to the estimator's, at most 1000). Each
        simulation is a full fit: budget ``num_simulations`` fits.
        """
        from bayesgen.diagnostics import sbc

        self._check_fitted()
        model, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        if learning_rate is None:
            learning_rate = self._learning_rate() if hasattr(self, "_learning_rate") else self.learning_rate
        steps = int(num_steps if num_steps is not None else min(int(getattr(self, "num_steps", 1000)), 1000))
        fit_kwargs = {
            "loss": getattr(self, "loss", "trace"),
            "optimizer": getattr(self, "optimizer", "adam"),
            "max_plate_nesting": getattr(self, "_max_plate_nesting", None),
        }
        return sbc(
            model,
            guide,
            *args,
            num_simulations=num_simulations,
            num_posterior_samples=num_posterior_samples,
            num_steps=steps,
            learning_rate=float(learning_rate),
            fit_kwargs=fit_kwargs,
            alpha=alpha,
            seed=self._method_seed(seed),
            **kwargs,
        )

    # -------------------------------------------------------------- save/load
    def save(self, path: PathLikeStr, *, overwrite: bool = False) -> Path:
        """Save the fitted estimator to a folder, whole or not at all.

        The folder holds ``meta.json`` (class, versions, hyperparameters,
        fitted attributes, the SHA-256 of ``tensors.pt``) and ``tensors.pt`` (a
        dict of CPU tensors: the unconstrained guide parameters and the data the
        model needs). Loading never executes code from these files, and refuses
        a ``tensors.pt`` that does not match its checksum. The folder is built
        next to ``path`` and renamed into place when complete (see
        :func:`bayesgen.io.staged_folder`).

        Parameters
        ----------
        path : str or os.PathLike
            Folder to create.
        overwrite : bool, default False
            Replace an existing file or a folder that is not empty at ``path``
            (only once the new folder is complete).

        Returns
        -------
        pathlib.Path

        Raises
        ------
        ValueError
            ``path`` exists and ``overwrite`` is False, or another process is writing it.
        bayesgen.io.WriteError
            A file could not be written; nothing is left at ``path``.
        """
        from bayesgen.io import atomic_path, file_sha256, staged_folder, write_json

        self._check_fitted()
        folder = Path(path)
        extra_meta, extra_tensors = self._get_extra_state()
        params = {name: value.detach().cpu().clone() for name, value in self._param_state["params"].items()}
        tensors = {"params": params, **extra_tensors, "losses": torch.as_tensor(self.losses_)}
        meta = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "class": type(self).__name__,
            "bayesgen_version": bayesgen.__version__,
            "torch_version": torch.__version__,
            "pyro_version": pyro.__version__,
            "hyperparameters": _jsonable(self.get_params()),
            "fitted": {
                "converged_": None if self.converged_ is None else bool(self.converged_),
                "n_steps_": int(self.n_steps_),
                "fit_seconds_": float(self.fit_seconds_),
                "device_": str(self.device_),
            },
            "extra": _jsonable(extra_meta),
        }
        with staged_folder(folder, overwrite=overwrite) as staging:
            with atomic_path(staging / "tensors.pt") as tmp:
                torch.save(tensors, tmp)
            meta["tensors_sha256"] = file_sha256(staging / "tensors.pt")
            write_json(staging / "meta.json", meta)
        return folder

    @classmethod
    def load(cls, path: PathLikeStr, *, device: str | torch.device = "auto") -> Self:
        """Load an estimator saved with :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The folder written by :meth:`save`.
        device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
            Where the loaded model computes; a model fitted on a GPU loads on
            a CPU-only machine.

        Returns
        -------
        BayesianEstimator

        Raises
        ------
        ModelFileError
            If the folder is missing, a file is corrupt, it holds objects
            other than tensors (it is not loaded), or it holds a different
            kind of model than ``cls``.
        ValueError
            If ``device`` is not available here or not one bayesgen computes on.
        """
        resolved_device = resolve_device(device)  # a device error is the device's, not the file's
        folder = Path(path)
        meta_path, tensor_path = folder / "meta.json", folder / "tensors.pt"
        if not meta_path.is_file() or not tensor_path.is_file():
            raise ModelFileError(f"{folder} is not a saved bayesgen model (meta.json and tensors.pt expected)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFileError(f"{meta_path} is corrupt: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{meta_path} is not bayesgen model metadata")
        if meta.get("format_version") not in _READABLE_FORMAT_VERSIONS:
            raise ModelFileError(
                f"{folder} has format version {meta.get('format_version')!r}; this bayesgen reads "
                f"{', '.join(map(str, _READABLE_FORMAT_VERSIONS))}"
            )
        _check_tensors_checksum(meta, tensor_path)
        class_name = meta.get("class")
        # Estimator modules load lazily: the model registry names each estimator's module before it is imported.
        from bayesgen.registry import MODELS

        modules = {e.estimator.partition(":")[2]: e.module for e in MODELS.values()}
        modules.update(BayesianEstimator._registry)
        if not isinstance(class_name, str) or class_name not in modules:
            raise ModelFileError(f"{folder} holds an unknown model class {class_name!r}")
        target = getattr(importlib.import_module(modules[class_name]), class_name)
        if not issubclass(target, cls):
            raise ModelFileError(f"{folder} holds a {class_name}, not a {cls.__name__}")
        tensors = load_tensor_file(tensor_path, ModelFileError, "bayesgen model file")
        if not isinstance(tensors, dict) or not isinstance(tensors.get("params"), dict):
            raise ModelFileError(f"{tensor_path} does not hold bayesgen model tensors")
        bad = [
            k for k, v in tensors["params"].items() if not isinstance(v, torch.Tensor) or not bool(v.isfinite().all())
        ]
        if bad:
            raise ModelFileError(f"{tensor_path} has missing or non-finite values in parameters {bad[:10]}")
        try:
            est = target(**{k: _from_jsonable(v) for k, v in meta["hyperparameters"].items()})
            # An edited setting is caught here, not at first use. The saved device need not exist on
            # this machine (a GPU fit loads on a CPU): `device` below decides where the model computes.
            saved_device, est.device = est.device, "cpu"
            est._validate_settings()
            est.device = saved_device
            for key, value in meta["fitted"].items():
                setattr(est, key, value)
            est.device_ = resolved_device
            est.losses_ = to_numpy(tensors["losses"])
            est._set_extra_state(meta["extra"], tensors)
            est._param_state = est._rebuild_param_state(tensors["params"])
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as err:
            if is_out_of_memory(err):  # the file is fine; the device is full
                raise
            what = f"missing entry {err}" if isinstance(err, KeyError) else str(err)
            raise ModelFileError(f"{folder} does not match {class_name} (a damaged or edited file?): {what}") from err
        return est

    def _rebuild_param_state(self, saved: dict[str, torch.Tensor]) -> dict:
        """Recreate the parameters of guide and model (with constraints), then set the saved values."""
        model, guide = self._model_and_guide()
        args, kwargs = self._model_args()
        state: dict = {"params": {}, "constraints": {}}
        with param_scope(state), torch.random.fork_rng():
            with poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                poutine.replay(model, trace=guide_trace)(*args, **kwargs)
            store = pyro.get_param_store()
            if set(store.keys()) != set(saved):
                raise KeyError(f"saved parameters {sorted(saved)} but model and guide make {sorted(store.keys())}")
            with torch.no_grad():
                for name, value in saved.items():
                    store.get_param(name).unconstrained().copy_(value.to(self.device_))
        return state

    # ------------------------------------------------------- subclass hooks
    def _model_and_guide(self, for_arviz: bool = False) -> tuple[ModelFn, ModelFn]:
        raise NotImplementedError

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        raise NotImplementedError

    def _arviz_dims(self) -> tuple[dict, dict]:
        return {}, {}

    def _reference_moments(self) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
        """Exact posterior (mean, sd) of the global sites that have a closed form, and why the others have none.

        Global sites are the guide's latent sites outside the row plate. Models
        with conjugate sites override this (used by
        :func:`~bayesgen.diagnostics.reference.reference_check`).
        """
        return {}, {name: "no closed-form posterior (compare with NUTS: nuts_check)" for name in self._global_sites()}

    def _global_sites(self) -> list[str]:
        """The guide's latent sites outside the row plate (those a reference can judge)."""
        _, guide = self._model_and_guide(for_arviz=True)
        args, kwargs = self._model_args(for_arviz=True)
        with param_scope(self._param_state), torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        return [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and not name.startswith("_")
            and not site_is_subsample(site)
            and not any(f.name == self._row_plate for f in site["cond_indep_stack"])
        ]

    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        return None


_explain_out_of_memory_in(BayesianEstimator)


def _check_tensors_checksum(meta: dict[str, Any], tensor_path: Path) -> None:
    """Refuse a ``tensors.pt`` whose bytes differ from the checksum its ``meta.json`` records."""
    from bayesgen.io import file_sha256

    expected = meta.get("tensors_sha256")
    if meta.get("format_version") == 1:  # format version 1 has no checksum
        logger.warning(
            "%s is in model format version 1, which has no checksum: its tensors cannot be checked for "
            "damage (save it again to add one)",
            tensor_path.parent,
        )
        return
    if not isinstance(expected, str):
        raise ModelFileError(
            f"{tensor_path.parent / 'meta.json'} has no checksum of tensors.pt (an edited file?); not loaded"
        )
    try:
        actual = file_sha256(tensor_path)
    except OSError as err:
        raise ModelFileError(f"{tensor_path} could not be read: {err}; not loaded") from err
    if actual != expected:
        raise ModelFileError(f"{tensor_path} does not match its checksum: the file was changed or damaged; not loaded")


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _from_jsonable(value: Any) -> Any:
    """Undo :func:`_jsonable` for a saved setting: non-finite floats were written as strings.

    Only a number's place is restored: a list of words (``stop_words=["nan", ...]``) stays as it is.
    """
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value] if not all(isinstance(v, str) for v in value) else value
    if isinstance(value, str) and value in _NON_FINITE:  # no bayesgen setting takes these strings
        return _NON_FINITE[value]
    return value


def _jsonable(value: Any) -> Any:
    """Make hyperparameters and metadata JSON-safe (tuples → lists, devices → str)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
