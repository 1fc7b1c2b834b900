"""Shared base of the estimators whose guide (and model) hold neural networks.

The VAE and ProdLDA train by epochs of minibatch SVI through the shared runner
(:func:`bayesgen.infer.run_svi` with its :class:`bayesgen.infer.Epochs`), report a per-epoch training and validation
ELBO, stop early on the validation ELBO and keep the best epoch's weights. The
networks' weights live in the estimator's own parameter state (registered with
``pyro.module``), and their buffers (batch-norm running statistics) are saved
with the model. The per-epoch bookkeeping and the buffers are part of each
step's state in the runner's checkpoints, so a fit resumed after an interrupt
anywhere in a step gives the same history, weights and buffers as an
uninterrupted one.

Their guides are amortised: one encoder maps every row to its local
posterior. :func:`refine_local` sharpens that per row (semi-amortised VI,
Kim et al. 2018), and :meth:`NeuralEstimator.reliability_notes` says in plain
sentences what the fit gives (point-estimate networks) and how far each row's
approximate posterior can be trusted (per-row PSIS k-hat).

References
----------
Kim, Wiseman, Miller, Sontag & Rush (2018), Semi-amortized variational autoencoders. ICML.
Yao, Vehtari, Simpson & Gelman (2018), Yes, but did it work?: Evaluating variational inference. ICML.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyro
import torch
from torch import nn

from bayesgen._runtime import import_optimiser_machinery
from bayesgen._typing import PathLikeStr
from bayesgen.distributed import data_parallel
from bayesgen.infer import Epochs, param_scope
from bayesgen.models._base import BayesianEstimator

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel

__all__ = ["NeuralEstimator", "refine_local"]


def refine_local(
    log_joint: Callable[[torch.Tensor], torch.Tensor],
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    num_steps: int,
    learning_rate: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine each row's Normal guide on its own ELBO, the networks fixed (semi-amortised VI).

    Starting from the encoder's ``Normal(loc, scale)`` of every row, takes
    ``num_steps`` Adam steps on ``Σ_i ELBO_i`` over the rows' own ``loc`` and
    ``log scale``, with one reparameterised draw per step and a learning rate
    that falls linearly to zero (so the last steps settle instead of
    wandering with the draws' noise). The rows' problems
    are independent; the draws' standard-normal noise is shared by all rows,
    so a row's result does not depend on which other rows are refined with it.
    Randomness comes from torch's current generator (seed it around the call).

    Parameters
    ----------
    log_joint : callable
        ``z`` of shape (n_draws, n_rows, latent_dim) → log p(x_i, z_i) of shape
        (n_draws, n_rows), differentiable in ``z``.
    loc, scale : Tensor, shape (n_rows, latent_dim)
        The encoder's output.
    num_steps : int
        0 returns ``loc`` and ``scale`` unchanged.
    learning_rate : float, default 0.1
        Adam's rate at the first step.

    Returns
    -------
    loc, scale : Tensor, shape (n_rows, latent_dim)
        Detached.
    """
    loc, scale = loc.detach(), scale.detach()
    if num_steps <= 0 or loc.shape[0] == 0:
        return loc, scale
    noise = torch.randn((num_steps, 1, 1, loc.shape[-1]), dtype=loc.dtype, device=loc.device)
    m = loc.clone().requires_grad_(True)
    log_s = scale.log().requires_grad_(True)
    opt = torch.optim.Adam([m, log_s], lr=float(learning_rate))
    with torch.enable_grad():
        for step, eps in enumerate(noise):
            opt.param_groups[0]["lr"] = float(learning_rate) * (1.0 - step / num_steps)
            s = log_s.exp()
            z = m + s * eps
            # log q(z) at z = m + s·eps is −Σ log s − Σ eps²/2 + const; only −Σ log s moves with m and s.
            elbo = log_joint(z).sum() + log_s.sum()
            # Gradients for the local parameters only: the networks' weights stay as fitted.
            m.grad, log_s.grad = torch.autograd.grad(-elbo, [m, log_s])
            opt.step()
    return m.detach(), log_s.detach().exp()


class _NetworkBuffers:
    """The networks' buffers (batch-norm running statistics) as a :class:`bayesgen.infer.StepState`.

    The runner checkpoints them with each step, rolls them back with an interrupted one and, in a
    data-parallel fit, averages their floating-point entries over the ranks at every step.
    """

    def __init__(self, estimator: NeuralEstimator) -> None:
        self.estimator = estimator

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.estimator._buffers().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.estimator._load_buffers(dict(state))

    def rank_averaged(self) -> list[torch.Tensor]:
        return [b for net in self.estimator._networks().values() for b in net.buffers() if b.is_floating_point()]


class NeuralEstimator(BayesianEstimator):
    """Epoch-based SVI training for model/guide pairs with networks.

    Subclasses implement ``_networks()`` (name → module, the names used in
    ``pyro.module``) and read ``num_epochs``, ``batch_size``, ``patience`` and
    ``progress`` from their hyperparameters.
    """

    #: What the fit gives as point estimates, and what each row's approximate posterior is over (for
    #: :meth:`reliability_notes`).
    _point_estimates: ClassVar[str] = "The networks' weights"
    _local_quantity: ClassVar[str] = "latent variables"
    _given: ClassVar[str] = "the networks"

    def _networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def _local_guide_name(self) -> str:
        """How each row's approximate posterior is made, for :meth:`reliability_notes`."""
        return "the encoder's amortised guide"

    def _local_advice(self, reliable: bool) -> str:
        """What a user can do with the rows' posteriors, for :meth:`reliability_notes`."""
        if reliable:
            return "Their posterior spreads can be read as such, given the point-estimate networks."
        return "For those rows, read the posterior means and treat the spreads as rough."

    def reliability_notes(self, rows: Any) -> dict[str, str]:
        """Plain sentences on what this amortised fit gives and how far to trust each row's posterior.

        Parameters
        ----------
        rows : bayesgen.diagnostics.RowDiagnostic
            Per-row PSIS k-hat (:meth:`vi_diagnostic_rows`).

        Returns
        -------
        dict
            ``point_estimates`` (what the fit gives without uncertainty),
            ``local_posterior`` (how each row's posterior is approximated and the
            share of checked rows whose k-hat is above 0.7), ``advice`` (what
            to do with it) and ``message`` (the three together).
        """
        share, n, plate = rows.shares["unreliable"], len(rows.khat), rows.plate
        notes = {
            "point_estimates": f"{self._point_estimates} are point estimates: the fit gives no posterior "
            "uncertainty for them.",
            "local_posterior": f"The posterior of each {plate}'s {self._local_quantity} given {self._given} is "
            f"approximate ({self._local_guide_name()}): its PSIS k-hat is above 0.7, where the "
            f"approximation is unreliable, for {share:.0%} of the {n} {plate}s checked.",
            "advice": self._local_advice(rows.verdict != "unreliable"),
        }
        notes["message"] = " ".join(notes.values())
        return notes

    def nuts_check(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: the networks' weights are point estimates, so NUTS has no posterior to compare with."""
        raise ValueError(
            f"{type(self).__name__} is amortised (network weights are point estimates): NUTS and SBC "
            "cross-checks apply to the small models; use vi_diagnostic_rows() for per-row k-hat"
        )

    def sbc_check(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered, for the same reason as :meth:`nuts_check`."""
        return self.nuts_check()

    @staticmethod
    def _check_row_index(rows: Any, n_rows: int, what: str) -> np.ndarray:
        """Training-row positions for ArviZ: a non-empty 1-D array of distinct integers in [0, n_rows)."""
        arr = np.asarray(list(rows) if isinstance(rows, range) else rows)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what} must be a non-empty sequence of integer row positions, got {rows!r}")
        if arr.min() < 0 or arr.max() >= n_rows:
            raise ValueError(
                f"{what} must be positions in 0..{n_rows - 1} (the training rows), got {arr.min()}..{arr.max()}"
            )
        if len(np.unique(arr)) != len(arr):
            raise ValueError(f"{what} repeats a row")
        return arr

    def _set_training(self, training: bool) -> None:
        for net in self._networks().values():
            net.train(training)

    # ------------------------------------------------------ parameter state
    def _sync_networks(self) -> None:
        """Point the networks at the estimator's parameter tensors (after fit or load)."""
        with param_scope(self._param_state):
            for name, net in self._networks().items():
                pyro.module(name, net)

    def _buffers(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{key}": value.detach()
            for name, net in self._networks().items()
            for key, value in net.named_buffers()
        }

    def _load_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        nets = self._networks()
        with torch.no_grad():
            for full, value in buffers.items():
                name, key = full.split(".", 1)
                target = dict(nets[name].named_buffers())[key]
                target.copy_(value.to(target.device))

    def _rebuild_param_state(self, saved: dict[str, torch.Tensor]) -> dict:
        self._set_training(False)
        state = super()._rebuild_param_state(saved)
        self._param_state = state
        self._sync_networks()
        return state

    def _network_state(self) -> dict[str, torch.Tensor]:
        """Buffers to save next to the parameters (``buffer.<net>.<name>``)."""
        return {f"buffer.{k}": v.cpu() for k, v in self._buffers().items()}

    def _load_network_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self._load_buffers({k[7:]: v for k, v in tensors.items() if k.startswith("buffer.")})

    # -------------------------------------------------------------- training
    def _before_step(self, step: int, num_steps: int) -> None:
        """Called before every training step (resumed fits included); a schedule goes here."""

    def _train_epochs(
        self,
        *args: torch.Tensor,
        n_train: int,
        validate: Callable[[], float] | None,
        checkpoint: PathLikeStr | None,
        checkpoint_every: int | None,
        resume: bool | PathLikeStr,
        desc: str,
        model_kwargs: dict[str, Any] | None = None,
        distributed: bool | DataParallel = False,
    ) -> None:
        """Run ``num_epochs`` epochs of minibatch SVI with the runner's :class:`bayesgen.infer.Epochs`.

        ``validate()`` returns the mean validation ELBO per row (higher is
        better), computed with the networks in evaluation mode; with ``patience``
        set, training stops after that many epochs without improvement and the
        best epoch's weights are restored. Sets ``history_``, ``best_epoch_``,
        ``losses_`` (per row), ``fit_seconds_`` and ``seconds_per_epoch_``.
        ``model_kwargs`` go to the model and guide with ``args``
        (whole-training-set tensors, like ``args``). With ``distributed``, an
        epoch is one pass over every rank's shard.
        """
        dp = data_parallel(distributed, cuda=self.device_.type == "cuda")
        world = 1 if dp is None else dp.world_size
        steps_per_epoch = n_train // world // int(self.batch_size)
        num_steps = steps_per_epoch * int(self.num_epochs)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            import_optimiser_machinery()
            bar = tqdm(total=int(self.num_epochs), desc=desc, unit="epoch", dynamic_ncols=True)

        def validate_in_eval_mode() -> float:
            self._set_training(False)
            try:
                return float(validate())
            finally:
                self._set_training(True)

        def show(row: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.endswith("elbo")})

        epochs = Epochs(
            steps_per_epoch,
            rows=n_train,
            validate=validate_in_eval_mode if validate is not None else None,
            patience=self.patience if validate is not None else None,
            state=_NetworkBuffers(self),
            on_epoch=show if bar is not None else None,
        )
        start = time.perf_counter()
        self._set_training(True)
        try:
            self._run_svi(
                *args,
                num_steps=num_steps,
                data_size=n_train,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                resume=resume,
                epochs=epochs,
                before_step=lambda step: self._before_step(step, num_steps),
                model_kwargs=model_kwargs,
                distributed=dp or False,
                pyro_validation="first",  # the data were checked before the fit
            )
        finally:
            self._set_training(False)
            if bar is not None:
                bar.close()
        self._sync_networks()
        self.best_epoch_ = epochs.best_epoch
        self.history_ = pd.DataFrame(epochs.history)
        self.losses_ = self.losses_ / n_train
        self.fit_seconds_ = time.perf_counter() - start
        self.seconds_per_epoch_ = self.fit_seconds_ / max(len(epochs.history), 1)

    def _history_meta(self) -> dict[str, Any]:
        return {
            "best_epoch_": int(self.best_epoch_),
            "history_": self.history_.to_dict("list"),
            "seconds_per_epoch_": float(self.seconds_per_epoch_),
        }

    def _set_history_meta(self, meta: dict[str, Any]) -> None:
        self.best_epoch_ = int(meta["best_epoch_"])
        self.history_ = pd.DataFrame(meta["history_"])
        self.seconds_per_epoch_ = float(meta["seconds_per_epoch_"])

    def _loss_history_tree(self) -> Any:
        """The loss per step and the per-epoch ELBOs, as an xarray DataTree node."""
        import xarray as xr

        loss = xr.Dataset(
            {"loss": ("step", np.asarray(self.losses_, dtype=float))},
            coords={"step": np.arange(len(self.losses_))},
        )
        if "epoch" in self.history_:
            loss = loss.assign_coords(epoch=self.history_["epoch"].to_numpy())
            for col in ("train_elbo", "val_elbo"):
                if col in self.history_:
                    loss[col] = ("epoch", self.history_[col].to_numpy(float))
        return xr.DataTree(dataset=loss)

    @property
    def loss(self) -> str:
        """The ELBO the runner uses (``jit=True`` picks ``JitTrace_ELBO``)."""
        return "jit_trace" if getattr(self, "jit", False) else "trace"
