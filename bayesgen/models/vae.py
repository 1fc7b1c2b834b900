"""Variational autoencoder (optionally conditional on a label), MLP or convolutional.

Generative story, for images i = 1..n with D pixels and a latent size L::

    z_i          ~ Normal(0, I_L)
    x_i | z_i    ~ likelihood(decoder(z_i [, onehot(y_i)]))   (independent pixels)

with ``likelihood`` one of

* ``"bernoulli"`` — pixels in [0, 1] read as probabilities (the classic choice
  for MNIST; grey values are allowed, as in Pyro's VAE tutorial);
* ``"continuous_bernoulli"`` — the normalised density on [0, 1]
  (Loaiza-Ganem & Cunningham 2019), a proper likelihood for grey pixels;
* ``"gaussian"`` — Normal(decoder mean, σ_j) with a learned per-pixel scale σ_j,
  for unbounded features.

The guide is amortised: q(z_i | x_i [, y_i]) = Normal(encoder(x_i [, y_i])).
Encoder and decoder are either MLPs (the classic 784-400-z pair) or a small
convolutional pair for images whose sides are multiples of 4 (28 × 28 MNIST,
8 × 8 digits). The networks' weights are point estimates (maximum marginal
likelihood), so the "posterior" is over each row's latent z.

Training is minibatch SVI with ``Trace_ELBO`` (or ``JitTrace_ELBO``) through the
shared runner: the data sit on the device once, each step picks a shuffled index
batch on the device and the model's ``pyro.plate`` subsamples with it — no
host-to-device copies and no DataLoader. ``amp=True`` runs the networks under
bfloat16 autocast (the distributions stay in float32).

The honest figure to report is the importance-weighted bound
(:meth:`VAE.log_likelihood`, Burda et al. 2016), which tightens toward log p(x)
as K grows, not the ELBO.

References
----------
Kingma & Welling (2014), Auto-encoding variational Bayes.
Sohn, Lee & Yan (2015), Learning structured output representation using deep
conditional generative models.
Burda, Grosse & Salakhutdinov (2016), Importance weighted autoencoders.
Loaiza-Ganem & Cunningham (2019), The continuous Bernoulli.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from bayesgen._labels import class_index, sample_class_index
from bayesgen._runtime import check_count, check_flag, check_labels, check_real, seeded, to_numpy
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.models._neural import NeuralEstimator

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.runs.spec import SpecFit

__all__ = [
    "VAE",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "model",
    "guide",
    "iwae_bound",
    "fit_vae_spec",
]

Likelihood = Literal["bernoulli", "continuous_bernoulli", "gaussian"]
Architecture = Literal["mlp", "conv"]
_LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")

#: Why a conditional VAE's latent plot shows the classes mixed (said under the plot and in the report).
CONDITIONAL_INTERPOLATION_NOTE = (
    "In a conditional VAE both images are of the same class and every frame is decoded with that "
    "label, so the frames change in style, not in class."
)

CONDITIONAL_LATENT_NOTE = (
    "The classes mix here by design: in a conditional VAE the decoder is given the label, so "
    "the latent code need not separate the classes and describes style (slant, thickness) "
    "instead."
)


# ------------------------------------------------------------------ networks
class MLPEncoder(nn.Module):
    """x (and a one-hot label) → (loc, scale) of q(z | x).

    Parameters
    ----------
    input_dim : int
        Pixels per image (D).
    latent_dim : int
    hidden_dims : sequence of int
    num_classes : int, default 0
        Size of the one-hot label input (0: unconditional).
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden_dims: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        sizes = [input_dim + num_classes, *hidden_dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        self.fc_loc = nn.Linear(sizes[-1], latent_dim)
        self.fc_scale = nn.Linear(sizes[-1], latent_dim)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x if onehot is None else torch.cat([x, onehot], dim=-1)
        for layer in self.hidden:
            h = F.softplus(layer(h))
        return self.fc_loc(h), F.softplus(self.fc_scale(h)) + 1e-4


class MLPDecoder(nn.Module):
    """z (and a one-hot label) → pixel logits (or means, for "gaussian")."""

    def __init__(self, input_dim: int, latent_dim: int, hidden_dims: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        sizes = [latent_dim + num_classes, *reversed(list(hidden_dims))]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        self.fc_out = nn.Linear(sizes[-1], input_dim)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        h = z if onehot is None else torch.cat([z, onehot.expand(*z.shape[:-1], onehot.shape[-1])], dim=-1)
        for layer in self.hidden:
            h = F.softplus(layer(h))
        return self.fc_out(h)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (32, 64 channels), then a hidden layer → (loc, scale).

    Parameters
    ----------
    image_shape : (int, int)
        Height and width, each a multiple of 4.
    latent_dim : int
    hidden_dim : int
    num_classes : int, default 0
    """

    def __init__(self, image_shape: tuple[int, int], latent_dim: int, hidden_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        h, w = self.image_shape
        self.conv1 = nn.Conv2d(1, 32, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2, padding=1)
        self.fc = nn.Linear(64 * (h // 4) * (w // 4) + num_classes, hidden_dim)
        self.fc_loc = nn.Linear(hidden_dim, latent_dim)
        self.fc_scale = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        h = x.reshape(-1, 1, *self.image_shape)
        h = F.relu(self.conv2(F.relu(self.conv1(h)))).flatten(1)
        if onehot is not None:
            h = torch.cat([h, onehot.reshape(-1, onehot.shape[-1])], dim=-1)
        h = F.relu(self.fc(h))
        loc, scale = self.fc_loc(h), F.softplus(self.fc_scale(h)) + 1e-4
        return loc.reshape(*lead, -1), scale.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """z (and a one-hot label) → hidden layer → two stride-2 transposed convolutions → logits."""

    def __init__(self, image_shape: tuple[int, int], latent_dim: int, hidden_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        h, w = self.image_shape
        self._grid = (64, h // 4, w // 4)
        self.fc1 = nn.Linear(latent_dim + num_classes, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 64 * (h // 4) * (w // 4))
        self.deconv1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        lead = z.shape[:-1]
        h = z if onehot is None else torch.cat([z, onehot.expand(*lead, onehot.shape[-1])], dim=-1)
        h = F.relu(self.fc2(F.relu(self.fc1(h.reshape(-1, h.shape[-1])))))
        h = F.relu(self.deconv1(h.reshape(-1, *self._grid)))
        return self.deconv2(h).reshape(*lead, -1)


class _GaussianScale(nn.Module):
    """Learned per-pixel scale of the "gaussian" likelihood (softplus of a free parameter)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(input_dim))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw) + 1e-3


# ------------------------------------------------------------ model / guide
def _autocast(x: torch.Tensor, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)


def _onehot(y: torch.Tensor | None, num_classes: int, like: torch.Tensor) -> torch.Tensor | None:
    if num_classes == 0 or y is None:
        return None
    return F.one_hot(y, num_classes).to(like.dtype)


def likelihood_dist(out: torch.Tensor, likelihood: Likelihood, scale: torch.Tensor | None = None) -> dist.Distribution:
    """The pixel distribution for decoder output ``out`` (logits, or means for "gaussian")."""
    if likelihood == "bernoulli":
        # validate_args=False: grey pixels in [0, 1] are allowed (cross-entropy), as in Pyro's tutorial.
        return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
    if likelihood == "continuous_bernoulli":
        return dist.ContinuousBernoulli(logits=out, validate_args=False).to_event(1)
    return dist.Normal(out, scale).to_event(1)


def model(
    x: torch.Tensor | None,
    y: torch.Tensor | None = None,
    subsample: torch.Tensor | None = None,
    *,
    decoder: nn.Module,
    likelihood: Likelihood = "bernoulli",
    num_classes: int = 0,
    latent_dim: int,
    num_rows: int | None = None,
    gaussian_scale: nn.Module | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """VAE model: z ~ Normal(0, I), x | z ~ likelihood(decoder(z, y)).

    Parameters
    ----------
    x : Tensor, shape (n_rows, n_pixels), or None
        Flattened images; None samples ``num_rows`` new images (prior predictive).
    y : Tensor of int64, shape (n_rows,), optional
        Class index of every row (conditional VAE).
    subsample : Tensor of int64, optional
        Rows of this minibatch (given by the SVI runner).
    decoder : torch.nn.Module
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
    num_classes : int
        0 for an unconditional VAE.
    latent_dim : int
    num_rows : int, optional
        Rows to generate when ``x`` is None.
    gaussian_scale : torch.nn.Module, optional
        Returns the per-pixel scale of the "gaussian" likelihood.
    amp : bool, default False
        Run the decoder under bfloat16 autocast.

    Returns
    -------
    Tensor
        The decoder output of the (sub)sampled rows.
    """
    pyro.module("decoder", decoder)
    scale = None
    if likelihood == "gaussian":
        pyro.module("gaussian_scale", gaussian_scale)
        scale = gaussian_scale()
    n = x.shape[0] if x is not None else int(num_rows)
    like = x if x is not None else next(decoder.parameters())
    with pyro.plate("row", n, subsample=subsample, device=like.device) as idx:
        xi = x.index_select(0, idx) if x is not None else None
        yi = y.index_select(0, idx) if y is not None else None
        loc = like.new_zeros(len(idx), latent_dim)
        z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
        with _autocast(like, amp):
            out = decoder(z, _onehot(yi, num_classes, z))
        out = out.float()
        pyro.sample("x", likelihood_dist(out, likelihood, scale), obs=xi)
    return out


def guide(
    x: torch.Tensor | None,
    y: torch.Tensor | None = None,
    subsample: torch.Tensor | None = None,
    *,
    encoder: nn.Module,
    num_classes: int = 0,
    num_rows: int | None = None,
    amp: bool = False,
    **unused: Any,
) -> None:
    """Amortised guide: z_i ~ Normal(encoder(x_i, y_i)). Same signature as :func:`model`."""
    pyro.module("encoder", encoder)
    with pyro.plate("row", x.shape[0], subsample=subsample, device=x.device) as idx:
        xi = x.index_select(0, idx)
        yi = y.index_select(0, idx) if y is not None else None
        with _autocast(xi, amp):
            loc, scale = encoder(xi, _onehot(yi, num_classes, xi))
        pyro.sample("z", dist.Normal(loc.float(), scale.float()).to_event(1))


def iwae_bound(
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    likelihood: Likelihood,
    num_classes: int = 0,
    num_samples: int = 1,
    gaussian_scale: nn.Module | None = None,
) -> torch.Tensor:
    """Importance-weighted bound on log p(x) per row; K = 1 is the ELBO.

    ``log (1/K) Σ_k p(x, z_k) / q(z_k | x)`` with z_k ~ q(z | x). Increases
    with K toward log p(x) (Burda et al. 2016).

    Parameters
    ----------
    x : Tensor, shape (n_rows, n_pixels)
    y : Tensor of int64, shape (n_rows,), or None
    encoder, decoder : torch.nn.Module
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
    num_classes : int, default 0
    num_samples : int, default 1
        K.
    gaussian_scale : torch.nn.Module, optional

    Returns
    -------
    Tensor, shape (n_rows,)
    """
    onehot = _onehot(y, num_classes, x)
    loc, scale = encoder(x, onehot)
    q = dist.Normal(loc, scale).to_event(1)
    z = q.rsample((num_samples,))  # (K, n, L)
    out = decoder(z, onehot)
    lik = likelihood_dist(out, likelihood, gaussian_scale() if gaussian_scale is not None else None)
    prior = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
    log_w = lik.log_prob(x) + prior.log_prob(z) - q.log_prob(z)
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples)


def _bind(fn: Any, conditional: bool, **fixed: Any) -> Any:
    """``fn`` with its networks and settings bound, called as ``(x[, y][, subsample])``.

    Only tensors travel as arguments (what ``JitTrace_ELBO`` can trace); an
    unconditional VAE takes no ``y`` at all rather than a None.
    """

    def bound(x: torch.Tensor | None, *rest: torch.Tensor, subsample: torch.Tensor | None = None) -> Any:
        y = None
        if conditional:
            y, *rest = rest
        if rest:
            subsample = rest[0]
        return fn(x, y, subsample, **fixed)

    functools.update_wrapper(bound, fn)
    return bound


# --------------------------------------------------------------- estimator
class VAE(NeuralEstimator):
    """Variational autoencoder, optionally conditional on a class label.

    Parameters
    ----------
    architecture : {"mlp", "conv"}, default "mlp"
        "conv" needs image sides that are multiples of 4.
    latent_dim : int, default 16
    hidden_dims : sequence of int, default (400,)
        MLP hidden layers (the encoder's; the decoder mirrors them). "conv"
        uses the first as its fully connected layer.
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}, default "bernoulli"
        "bernoulli" and "continuous_bernoulli" need features in [0, 1].
    conditional : bool, default False
        Feed the label to encoder and decoder, so ``sample(n, y=k)`` makes class k.
    image_shape : (int, int), optional
        Height and width; inferred from 3-D/4-D input or a square pixel count.
    num_epochs : int, default 20
    batch_size : int, default 128
    learning_rate : float, default 1e-3
    jit : bool, default False
        Use ``JitTrace_ELBO`` (compiles the model and guide once).
    amp : bool, default False
        bfloat16 autocast for the networks (mainly for CUDA).
    validation_fraction : float, default 0.0
        Rows held out for the validation ELBO, when ``fit`` gets no ``X_val``.
    patience : int, optional
        Stop after this many epochs without a better validation ELBO and keep
        the best epoch's weights (needs validation rows).
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    num_threads : int, "auto" or None, default "auto"
        torch's CPU threads while fitting by SVI, the caller's count restored after: "auto" keeps a count
        you set (``OMP_NUM_THREADS``, ``torch.set_num_threads``) and otherwise uses one thread for a
        small step and the idle physical cores for a large one (:func:`bayesgen.infer.run_svi`); an int
        also applies to this estimator's other methods.
    seed : int, default 0
    progress : bool, default False
        A progress bar per epoch with the training (and validation) ELBO.

    Attributes
    ----------
    losses_ : numpy.ndarray
        Loss (negative ELBO) per step, per row.
    history_ : pandas.DataFrame
        Per epoch: ``train_elbo`` and ``val_elbo`` (per row) and ``seconds``
        since the start of training.
    best_epoch_ : int
    classes_ : numpy.ndarray or None
    image_shape_ : (int, int) or None

    Examples
    --------
    >>> from bayesgen.datasets import load_digits
    >>> X, y = load_digits()
    >>> vae = VAE(latent_dim=4, hidden_dims=(64,), num_epochs=2, seed=0).fit(X)
    >>> vae.reconstruct(X[:3]).shape
    (3, 64)
    """

    _model_name = "vae"
    _max_plate_nesting = 1
    _row_plate = "row"
    _point_estimates: ClassVar[str] = "The decoder's weights (the generative model)"
    _local_quantity: ClassVar[str] = "latent z"
    _given: ClassVar[str] = "the decoder"

    def _local_advice(self, reliable: bool) -> str:
        if reliable:
            return "Their spreads (encode, posterior) can be read as posterior spreads given the decoder."
        return (
            "For those rows, read the latent means and treat the spreads as rough; log_likelihood's importance "
            "weighting still gives a valid lower bound on log p(x)."
        )

    def __init__(
        self,
        *,
        architecture: Architecture = "mlp",
        latent_dim: int = 16,
        hidden_dims: Sequence[int] = (400,),
        likelihood: Likelihood = "bernoulli",
        conditional: bool = False,
        image_shape: tuple[int, int] | None = None,
        num_epochs: int = 20,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        jit: bool = False,
        amp: bool = False,
        validation_fraction: float = 0.0,
        patience: int | None = None,
        device: DeviceLike = "auto",
        num_threads: int | Literal["auto"] | None = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.architecture = architecture
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.likelihood = likelihood
        self.conditional = conditional
        self.image_shape = image_shape
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.jit = jit
        self.amp = amp
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------ validation
    def _validate_settings(self) -> None:
        if self.architecture not in ("mlp", "conv"):
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {self.architecture!r}")
        if self.likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {self.likelihood!r}")
        super()._validate_settings()  # shared settings and device
        check_count(self.latent_dim, "latent_dim")
        for name in ("conditional", "jit", "amp"):
            check_flag(getattr(self, name), name)
        if isinstance(self.hidden_dims, str) or not hasattr(self.hidden_dims, "__iter__"):
            raise ValueError(f"hidden_dims must be a non-empty sequence of positive integers, got {self.hidden_dims!r}")
        hidden = list(self.hidden_dims)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 1 for h in hidden):
            raise ValueError(f"hidden_dims must be a non-empty sequence of positive integers, got {self.hidden_dims!r}")
        if self.image_shape is not None:
            shape = self.image_shape
            if (
                isinstance(shape, str)
                or not hasattr(shape, "__len__")
                or len(shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in shape)
            ):
                raise ValueError(f"image_shape must be two positive integers (height, width), got {shape!r}")

    def _as_images(self, X: Any, what: str = "X") -> tuple[np.ndarray, tuple[int, int] | None]:
        """Flatten 2-D/3-D/4-D image input to (n, D) float32; check type, NaN and support."""
        if isinstance(X, pd.DataFrame):
            bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])]
            if bad:
                raise TypeError(f"{what} has non-numeric columns {bad[:5]}; a VAE needs numeric pixels/features")
            X = X.to_numpy()
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        arr = np.asarray(X)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise TypeError(f"{what} must be real-valued, got dtype {arr.dtype}")
        shape = None
        if arr.ndim == 4:
            if arr.shape[1] != 1:
                raise ValueError(
                    f"{what} has shape {arr.shape}; 4-D images must be (n, 1, height, width) (one channel)"
                )
            shape = arr.shape[2:]
        elif arr.ndim == 3:
            shape = arr.shape[1:]
        elif arr.ndim != 2:
            raise ValueError(f"{what} must be 2-D (rows, pixels) or images (n, h, w); got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"{what} has no rows")
        flat = arr.reshape(arr.shape[0], -1).astype(np.float32)
        if not np.isfinite(flat).all():
            rows = np.nonzero(~np.isfinite(flat).all(axis=1))[0]
            raise ValueError(f"{what} has NaN or infinite values in {len(rows)} rows (first: row {rows[0]})")
        if self.likelihood in ("bernoulli", "continuous_bernoulli"):
            lo, hi = float(flat.min()), float(flat.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"likelihood={self.likelihood!r} needs values in [0, 1]; {what} ranges over [{lo:g}, {hi:g}]"
                    + (" (8-bit pixels? divide by 255)" if hi > 1.0 and hi <= 255.0 else "")
                    + ". Scale the data or use likelihood='gaussian'."
                )
        return flat, (tuple(int(s) for s in shape) if shape is not None else None)

    def _check_new_x(self, X: Any, what: str = "X") -> torch.Tensor:
        if not hasattr(self, "n_features_"):  # set at the start of fit, so fit can check X_val here too
            self._check_fitted()
        flat, shape = self._as_images(X, what)
        if flat.shape[1] != self.n_features_:
            expect = f"{self.image_shape_[0]} x {self.image_shape_[1]} images" if self.image_shape_ else ""
            raise ValueError(
                f"{what} has {flat.shape[1]} pixels per row"
                + (f" (images of {shape[0]} x {shape[1]})" if shape else "")
                + f"; this model was fitted to {self.n_features_}"
                + (f" ({expect})" if expect else "")
            )
        if shape is not None and self.image_shape_ is not None and tuple(shape) != tuple(self.image_shape_):
            raise ValueError(
                f"{what} holds {shape[0]} x {shape[1]} images; this model was fitted to "
                f"{self.image_shape_[0]} x {self.image_shape_[1]} images"
            )
        return torch.as_tensor(flat, device=self.device_)

    def _labels_to_index(self, y: Any, n: int, what: str = "y") -> torch.Tensor | None:
        if not self.conditional:
            if y is not None:
                raise ValueError("this VAE is not conditional; refit with conditional=True to use labels")
            return None
        if y is None:
            raise ValueError(f"this VAE is conditional: pass the labels {what}")
        return torch.as_tensor(class_index(y, self.classes_, n, what), device=self.device_)

    # ----------------------------------------------------------- networks
    def _build_networks(self) -> None:
        d, L, C = self.n_features_, int(self.latent_dim), self.num_classes_
        hidden = [int(h) for h in self.hidden_dims]
        if self.architecture == "mlp":
            self.encoder_ = MLPEncoder(d, L, hidden, C)
            self.decoder_ = MLPDecoder(d, L, hidden, C)
        else:
            self.encoder_ = ConvEncoder(self.image_shape_, L, hidden[0], C)
            self.decoder_ = ConvDecoder(self.image_shape_, L, hidden[0], C)
        self.gaussian_scale_ = _GaussianScale(d) if self.likelihood == "gaussian" else None
        for net in (self.encoder_, self.decoder_, self.gaussian_scale_):
            if net is not None:
                net.to(self.device_)

    def _model_and_guide(self, for_arviz: bool = False) -> tuple:
        common = {"num_classes": self.num_classes_, "amp": bool(self.amp) and not for_arviz}
        m = _bind(
            model,
            self.conditional,
            decoder=self.decoder_,
            likelihood=self.likelihood,
            latent_dim=int(self.latent_dim),
            gaussian_scale=self.gaussian_scale_,
            **common,
        )
        return m, _bind(guide, self.conditional, encoder=self.encoder_, **common)

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        rows = self._arviz_rows if for_arviz else slice(0, min(len(self._x), int(self.batch_size)))
        x = self._x[rows]
        return ((x, self._y[rows]) if self.conditional else (x,)), {}

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        X_val: Any = None,
        y_val: Any = None,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> VAE:
        """Train encoder and decoder by minibatch SVI.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_pixels), (n_rows, h, w) or (n_rows, 1, h, w)
        y : array_like, shape (n_rows,), optional
            Labels; required when ``conditional=True``.
        X_val, y_val : array_like, optional
            Validation rows for the per-epoch validation ELBO and early
            stopping (else ``validation_fraction`` of ``X`` is held out).
        checkpoint, checkpoint_every, resume, distributed
            See :func:`bayesgen.infer.run_svi`; ``checkpoint_every`` counts steps; ``distributed=True`` fits
            data-parallel under ``torchrun`` (``batch_size`` rows per rank).

        Returns
        -------
        VAE
            ``self``, fitted.
        """
        self._validate_settings()
        flat, shape = self._as_images(X)
        self.n_features_ = flat.shape[1]
        self.image_shape_ = self._resolve_image_shape(shape, self.n_features_)
        if self.conditional:
            if y is None:
                raise ValueError("conditional=True needs labels y")
            self.classes_ = np.unique(check_labels(y, len(flat)))
            if len(self.classes_) < 2:
                raise ValueError(f"conditional=True needs at least 2 classes, got {self.classes_.tolist()}")
        else:
            if y is not None:
                raise ValueError("labels y were given but conditional=False; pass conditional=True to use them")
            self.classes_ = None
        self.num_classes_ = len(self.classes_) if self.classes_ is not None else 0
        x_all = torch.as_tensor(flat, device=self.device_)
        y_all = self._labels_to_index(y, len(flat)) if self.conditional else None

        # Validation rows: given, or a seeded slice of X.
        if X_val is not None:
            x_val = self._check_new_x(X_val, "X_val")
            y_val_t = self._labels_to_index(y_val, len(x_val), "y_val")  # refuses y_val if not conditional
            x_tr, y_tr = x_all, y_all
        elif float(self.validation_fraction) > 0:
            n_val = max(1, int(round(float(self.validation_fraction) * len(flat))))
            if n_val >= len(flat):
                raise ValueError("validation_fraction leaves no training rows")
            perm = torch.as_tensor(np.random.default_rng(self.seed).permutation(len(flat)), device=self.device_)
            val_idx, tr_idx = perm[:n_val], perm[n_val:]
            x_val, x_tr = x_all[val_idx], x_all[tr_idx]
            y_val_t = y_all[val_idx] if y_all is not None else None
            y_tr = y_all[tr_idx] if y_all is not None else None
        else:
            x_val = y_val_t = None
            x_tr, y_tr = x_all, y_all
        if self.patience is not None and x_val is None:
            raise ValueError("patience needs validation rows: pass X_val or validation_fraction > 0")
        if int(self.batch_size) > len(x_tr):
            raise ValueError(f"batch_size={self.batch_size} exceeds the {len(x_tr)} training rows")
        self._x, self._y = x_tr, y_tr
        self.class_counts_ = np.bincount(y_tr.cpu().numpy(), minlength=self.num_classes_) if y_tr is not None else None
        self._arviz_rows = slice(0, min(64, len(x_tr)))
        self._ppc_pixels, self._ppc_threshold = self._ppc_reference(x_tr)
        with seeded(self.seed, self.device_):
            self._build_networks()

        validate = None
        if x_val is not None:

            def validate() -> float:
                return self._mean_elbo(x_val, y_val_t)

        self._train_epochs(
            *((x_tr, y_tr) if self.conditional else (x_tr,)),
            n_train=len(x_tr),
            validate=validate,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            distributed=distributed,
            desc="VAE",
        )
        return self

    def _resolve_image_shape(self, shape: tuple[int, int] | None, d: int) -> tuple[int, int] | None:
        if self.image_shape is not None:
            h, w = (int(s) for s in self.image_shape)
            if h * w != d:
                raise ValueError(f"image_shape={tuple(self.image_shape)} has {h * w} pixels, but X has {d} per row")
            shape = (h, w)
        elif shape is None:
            side = math.isqrt(d)
            shape = (side, side) if side * side == d else None
        if self.architecture == "conv":
            if shape is None:
                raise ValueError(f"architecture='conv' needs images: {d} pixels is not square; pass image_shape=(h, w)")
            if shape[0] % 4 or shape[1] % 4:
                raise ValueError(f"architecture='conv' needs image sides that are multiples of 4, got {shape}")
        return shape

    def _networks(self) -> dict[str, nn.Module]:
        nets = {"encoder": self.encoder_, "decoder": self.decoder_}
        if self.gaussian_scale_ is not None:
            nets["gaussian_scale"] = self.gaussian_scale_
        return nets

    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {
            "n_features_": int(self.n_features_),
            "image_shape_": list(self.image_shape_) if self.image_shape_ else None,
            "classes_": self.classes_.tolist() if self.classes_ is not None else None,
            "class_counts_": self.class_counts_.tolist() if self.class_counts_ is not None else None,
            "ppc_pixels": [int(j) for j in self._ppc_pixels],
            "ppc_threshold": float(self._ppc_threshold),
            **self._history_meta(),
        }
        n = min(len(self._x), 256)  # a few rows for to_arviz after loading, not the data set
        tensors = {"x": self._x[:n].detach().cpu()}
        if self._y is not None:
            tensors["y"] = self._y[:n].detach().cpu()
        return meta, tensors

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.n_features_ = int(meta["n_features_"])
        self.image_shape_ = tuple(meta["image_shape_"]) if meta["image_shape_"] else None
        self.classes_ = np.asarray(meta["classes_"]) if meta["classes_"] is not None else None
        self.num_classes_ = len(self.classes_) if self.classes_ is not None else 0
        self.class_counts_ = np.asarray(meta["class_counts_"]) if meta.get("class_counts_") is not None else None
        self._set_history_meta(meta)
        self._x = tensors["x"].to(self.device_)
        self._y = tensors["y"].to(self.device_) if "y" in tensors else None
        self._arviz_rows = slice(0, min(64, len(self._x)))
        if "ppc_pixels" in meta:
            pixels, threshold = meta["ppc_pixels"], meta.get("ppc_threshold")
            if (
                not isinstance(pixels, list)
                or not pixels
                or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.n_features_ for j in pixels)
            ):
                raise ValueError(
                    f"ppc_pixels must be a non-empty list of pixel indices below {self.n_features_}, got {pixels!r}"
                )
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
                raise ValueError(f"ppc_threshold must be a finite number, got {threshold!r}")
            self._ppc_pixels, self._ppc_threshold = np.asarray(pixels, dtype=np.int64), float(threshold)
        else:  # a file without them: chosen from the rows it keeps
            self._ppc_pixels, self._ppc_threshold = self._ppc_reference(self._x)
        self._build_networks()

    # -------------------------------------------------------------- verbs
    @torch.no_grad()
    def _mean_elbo(self, x: torch.Tensor, y: torch.Tensor | None) -> float:
        return float(self._bound(x, y, 1).mean())

    @torch.no_grad()
    def _bound(
        self, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, batch_rows: int | None = None
    ) -> torch.Tensor:
        # Rows in chunks so that K x rows x pixels stays around 2e7 numbers.
        rows = batch_rows or max(1, int(2e7 // (num_samples * max(self.n_features_, 1))))
        out = []
        for i in range(0, len(x), rows):
            out.append(
                iwae_bound(
                    x[i : i + rows],
                    y[i : i + rows] if y is not None else None,
                    encoder=self.encoder_,
                    decoder=self.decoder_,
                    likelihood=self.likelihood,
                    num_classes=self.num_classes_,
                    num_samples=num_samples,
                    gaussian_scale=self.gaussian_scale_,
                )
            )
        return torch.cat(out)

    def _inputs(self, X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checked rows on the device and their class indices (None for an unconditional VAE)."""
        self._check_fitted()
        x = self._check_new_x(X)
        return x, (self._labels_to_index(y, len(x)) if self.conditional or y is not None else None)

    def elbo(self, X: Any, y: Any = None, *, num_samples: int = 1, seed: int | None = 0) -> np.ndarray:
        """ELBO of every row (nats), averaged over ``num_samples`` draws of z.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_pixels) or images
        y : array_like, optional
            Labels (conditional VAE).
        num_samples : int, default 1
        seed : int or None, default 0
            None: the estimator's ``seed``.

        Returns
        -------
        numpy.ndarray, shape (n_rows,)
        """
        x, yi = self._inputs(X, y)
        num_samples = check_count(num_samples, "num_samples")
        with seeded(self._method_seed(seed), self.device_):
            vals = torch.stack([self._bound(x, yi, 1) for _ in range(num_samples)]).mean(0)
        return to_numpy(vals)

    def log_likelihood(self, X: Any, y: Any = None, *, num_samples: int = 500, seed: int | None = 0) -> np.ndarray:
        """Importance-weighted (IWAE) estimate of log p(x) for every row (nats).

        A lower bound that tightens as ``num_samples`` (K) grows; with K = 1 it
        is the ELBO. Report this, not the ELBO, as the model's log-likelihood.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_pixels) or images
        y : array_like, optional
        num_samples : int, default 500
        seed : int or None, default 0
            None: the estimator's ``seed``.

        Returns
        -------
        numpy.ndarray, shape (n_rows,)
        """
        num_samples = check_count(num_samples, "num_samples")
        x, yi = self._inputs(X, y)
        with seeded(self._method_seed(seed), self.device_):
            return to_numpy(self._bound(x, yi, num_samples))

    def posterior(
        self, num_samples: int = 100, *, X: Any = None, y: Any = None, seed: int | None = None
    ) -> dict[str, np.ndarray]:
        """Draws of every row's latent z from q(z | x).

        Parameters
        ----------
        num_samples : int, default 100
        X : array_like, optional
            Rows to encode (default: the first 64 training rows).
        y : array_like, optional
            Labels of ``X`` (conditional VAE).
        seed : int, optional
            Default: the estimator's ``seed`` (the same draws each call).

        Returns
        -------
        dict
            ``z``: numpy.ndarray, shape (num_samples, n_rows, latent_dim).
        """
        self._check_fitted()
        num_samples = check_count(num_samples, "num_samples")
        if X is None:
            x = self._x[self._arviz_rows]
            yi = self._y[self._arviz_rows] if self._y is not None else None
        else:
            x, yi = self._inputs(X, y)
        with torch.no_grad(), seeded(self._method_seed(seed), self.device_):
            loc, scale = self.encoder_(x, _onehot(yi, self.num_classes_, x))
            z = dist.Normal(loc, scale).sample((num_samples,))
        return {"z": to_numpy(z)}

    @torch.no_grad()
    def encode(self, X: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and scale of z for every row.

        Returns
        -------
        loc, scale : numpy.ndarray, shape (n_rows, latent_dim)
        """
        x, yi = self._inputs(X, y)
        loc, scale = self.encoder_(x, _onehot(yi, self.num_classes_, x))
        return to_numpy(loc), to_numpy(scale)

    def latent_activity(self, X: Any, y: Any = None, *, threshold: float = 0.01) -> pd.DataFrame:
        """Which latent dimensions the fit uses, and which follow the prior (posterior collapse).

        A dimension is *active* when its posterior mean moves with the image: the variance of
        E[z_k | x] over the rows of ``X`` exceeds ``threshold`` (Burda et al., 2016, with their
        0.01). An inactive one has q(z_k | x) ≈ Normal(0, 1) for every image: the decoder ignores
        it, and its KL term is near 0. Collapsed dimensions are not an error (a latent space larger
        than the data need collapses in part), but they carry nothing: a 2-D latent plot or an
        interpolation along one of them shows no change.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_pixels)
            Images to average over (held-out rows, or the training rows).
        y : array_like, shape (n_rows,), optional
            Labels (conditional VAE).
        threshold : float, default 0.01
            Variance of the posterior mean above which a dimension counts as active.

        Returns
        -------
        pandas.DataFrame
            One row per latent dimension (``z[0]``, ``z[1]``, …), sorted as the latent: ``activity``
            (variance of the posterior mean over rows), ``kl`` (mean over rows of
            KL(q(z_k | x) ‖ Normal(0, 1)), nats) and ``active`` (bool).
            ``attrs["active"]`` is the number of active dimensions.
        """
        threshold = check_real(threshold, "threshold", low=0.0)
        loc, scale = self.encode(X, y)
        loc, scale = loc.astype(np.float64), scale.astype(np.float64)
        if len(loc) < 2:
            raise ValueError("latent_activity needs at least 2 rows (it is a variance over rows)")
        activity = loc.var(axis=0, ddof=1)
        kl = (0.5 * (loc**2 + scale**2 - 1.0) - np.log(scale)).mean(axis=0)
        table = pd.DataFrame(
            {"activity": activity, "kl": kl, "active": activity > threshold},
            index=pd.Index([f"z[{k}]" for k in range(loc.shape[1])], name="latent"),
        )
        table.attrs["active"] = int(table["active"].sum())
        return table

    def _mean_image(self, out: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.likelihood == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=out, validate_args=False).mean
        return out

    @torch.no_grad()
    def decode(self, Z: Any, y: Any = None) -> np.ndarray:
        """Mean image for latent codes ``Z`` (n, latent_dim)."""
        self._check_fitted()
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32), device=self.device_)
        if z.ndim != 2 or z.shape[1] != int(self.latent_dim):
            raise ValueError(f"Z must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("Z has NaN or infinite values")
        yi = self._labels_to_index(y, len(z)) if self.conditional or y is not None else None
        return to_numpy(self._mean_image(self.decoder_(z, _onehot(yi, self.num_classes_, z))))

    def reconstruct(self, X: Any, y: Any = None) -> np.ndarray:
        """Mean image decoded from each row's posterior mean z.

        Returns
        -------
        numpy.ndarray, shape (n_rows, n_pixels)
        """
        loc, _ = self.encode(X, y)
        return self.decode(loc, y)

    def sample(
        self, n: int, y: Any = None, *, seed: int | None = None, mean: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Generate ``n`` new rows from z ~ Normal(0, I).

        Parameters
        ----------
        n : int
        y : None, "uniform", a class label or array_like of ``n`` labels
            Conditional VAE only. None draws each row's class from the
            training proportions; "uniform" gives exactly balanced classes
            (``n % C`` of them one row more, the first in ``classes_`` order)
            in a random order; a label gives every row that class; a sequence
            gives each row its own.
        seed : int, optional
            Default: the estimator's ``seed`` (the same draws each call).
        mean : bool, default True
            Return the decoder's mean image (smooth) instead of a draw from
            the pixel likelihood (noisy, e.g. binary for "bernoulli").

        Returns
        -------
        X : numpy.ndarray, shape (n, n_pixels)
        y : numpy.ndarray, shape (n,), or None for an unconditional VAE

        Raises
        ------
        ValueError
            ``y`` given to an unconditional VAE; a label not in ``classes_``;
            a sequence without ``n`` labels.
        """
        self._check_fitted()
        n = check_count(n, "n", minimum=0)
        seed = self._method_seed(seed)
        labels, yi = None, None
        if self.conditional:
            index = sample_class_index(y, n, self.classes_, self.class_counts_, np.random.default_rng(seed))
            labels, yi = self.classes_[index], torch.as_tensor(index, device=self.device_)
        elif y is not None:
            raise ValueError("this VAE is not conditional; refit with conditional=True to sample a class")
        with seeded(seed, self.device_), torch.no_grad():
            z = torch.randn(int(n), int(self.latent_dim), device=self.device_)
            out = self.decoder_(z, _onehot(yi, self.num_classes_, z))
            if mean:
                xs = self._mean_image(out)
            else:
                scale = self.gaussian_scale_() if self.gaussian_scale_ is not None else None
                xs = likelihood_dist(out, self.likelihood, scale).sample()
        return to_numpy(xs), labels

    def interpolate(self, x1: Any, x2: Any, steps: int = 8, *, y: Any = None) -> np.ndarray:
        """Decode evenly spaced points on the line between two rows' posterior means.

        Parameters
        ----------
        x1, x2 : array_like, shape (n_pixels,) or an image
        steps : int, default 8
            Points, both ends included.
        y : label, optional
            Class to decode with (conditional VAE).

        Returns
        -------
        numpy.ndarray, shape (steps, n_pixels)
        """
        self._check_fitted()
        steps = check_count(steps, "steps", minimum=2)
        ends = [np.asarray(x1, dtype=np.float32).reshape(-1), np.asarray(x2, dtype=np.float32).reshape(-1)]
        if ends[0].size != ends[1].size:
            raise ValueError(
                f"x1 and x2 must be two rows of the same size, got {ends[0].size} and {ends[1].size} values"
            )
        pair = np.stack(ends)
        labels = None if y is None else np.full(2, y)
        loc, _ = self.encode(pair, labels)
        t = np.linspace(0.0, 1.0, steps)[:, None]
        path = (1 - t) * loc[0] + t * loc[1]
        return self.decode(path, None if y is None else np.full(steps, y))

    def to_arviz(self, num_samples: int = 100, *, rows: Any = None, seed: int | None = 0, prior: bool = False) -> Any:
        """Latent posteriors of chosen rows, their predictive, and the loss history.

        Groups: ``posterior`` (``z`` with dims row, latent), ``posterior_predictive``
        and ``log_likelihood`` (``x`` per row and pixel), ``observed_data``, and
        ``loss_history`` (``loss`` per step, ``train_elbo``/``val_elbo`` per epoch).

        Parameters
        ----------
        num_samples : int, default 100
        rows : array_like of int or slice, optional
            Training rows to include (default: the first 64).
        seed : int or None, default 0
            None: the estimator's ``seed``.
        prior : bool, default False

        Returns
        -------
        xarray.DataTree
        """
        self._check_fitted()
        if rows is not None:
            self._arviz_rows = (
                rows
                if isinstance(rows, slice)
                else torch.as_tensor(
                    self._check_row_index(rows, len(self._x), "rows"), dtype=torch.int64, device=self.device_
                )
            )
        try:
            tree = super().to_arviz(num_samples, seed=seed, prior=prior)
        finally:
            self._arviz_rows = slice(0, min(64, len(self._x)))
        tree["loss_history"] = self._loss_history_tree()
        return tree

    def _arviz_dims(self) -> tuple[dict, dict]:
        dims = {"z": ["row", "latent"], "x": ["row", "pixel"]}
        return dims, {"latent": np.arange(int(self.latent_dim)), "pixel": np.arange(self.n_features_)}

    def _ppc_reference(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        """The predictive check's pixels (the 3 that vary most over ``x``) and "on" threshold (0.5 for pixels in
        [0, 1]; the mean of ``x`` for the Gaussian likelihood, whose values are not bounded)."""
        values = x.float()  # on the device: no host copy of the training set
        variance = to_numpy(values.var(dim=0, unbiased=False)).astype(float)
        pixels = np.argsort(-variance, kind="stable")[:3].astype(np.int64)
        threshold = float(values.mean()) if self.likelihood == "gaussian" else 0.5
        return pixels, threshold

    def _ppc_statistics(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """Mean intensity, the sd of intensity within an image (mean over images), the share of pixels "on"
        (above 0.5; above the training mean for the Gaussian likelihood), and the mean of each of the 3 pixels
        that vary most in the training data."""
        x = data["x"]  # (n_rows, n_pixels)
        t = self._ppc_threshold
        out = {
            "mean intensity": float(x.mean()),
            "sd within image[mean]": float(x.std(axis=1).mean()),
            f"share of pixels > {t:.3g}": float((x > t).mean()),
        }
        for j in self._ppc_pixels:
            out[f"mean[pixel {j}]"] = float(x[:, j].mean())
        return out

    def _ppc_advice(self, observed: dict[str, np.ndarray], failed: list[str]) -> str | None:
        """Why a Bernoulli VAE fails the checks on grey images, and what to do (None for other causes)."""
        x = observed["x"]
        grey = float(np.mean((x > 0) & (x < 1)))
        if self.likelihood != "bernoulli" or grey < 0.01:
            return None
        return (
            f"The Bernoulli likelihood replicates every pixel as 0 or 1, but {grey:.0%} of these pixels are grey, "
            "so statistics of grey levels (the sd within an image, the share of pixels above a threshold) cannot "
            "match whatever the fit: read the means, and for grey images fit likelihood='continuous_bernoulli' "
            "or 'gaussian'."
        )

    # --------------------------------------------------------------- plots
    def plot_samples(self, num_per_class: int = 8, *, seed: int = 0) -> Any:
        """Grid of generated images (one row per class for a conditional VAE)."""
        from bayesgen.plots import plot_image_grid

        self._check_fitted()
        shape = self._plot_shape()
        if self.conditional:
            grid = np.stack([self.sample(num_per_class, y=c, seed=seed)[0] for c in self.classes_])
            return plot_image_grid(grid, shape, row_labels=[str(c) for c in self.classes_])
        x, _ = self.sample(num_per_class * 4, seed=seed)
        return plot_image_grid(x.reshape(4, num_per_class, -1), shape)

    def plot_reconstructions(self, X: Any, y: Any = None, *, num: int = 8) -> Any:
        """Originals (top row) above their reconstructions (bottom row)."""
        from bayesgen.plots import plot_image_grid

        flat = self._check_new_x(X).cpu().numpy()[:num]
        rec = self.reconstruct(flat, None if y is None else np.asarray(y)[:num])
        return plot_image_grid(np.stack([flat, rec]), self._plot_shape(), row_labels=["original", "reconstructed"])

    def plot_latent(self, X: Any, labels: Any = None, *, y: Any = None) -> Any:
        """Scatter of the posterior means (first two latents, or a 2-D PCA projection).

        For a conditional VAE the figure says, under the plot, why the classes
        overlap: the decoder is given the label, so the latent code need not
        separate the classes.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_pixels)
        labels : array_like, shape (n_rows,), optional
            Colours the points.
        y : array_like, shape (n_rows,), optional
            The labels the encoder is given (conditional VAE).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        loc, _ = self.encode(X, y)
        if labels is not None and np.shape(labels) != (len(loc),):
            raise ValueError(f"labels must have one entry per row of X ({len(loc)}), got shape {np.shape(labels)}")
        if loc.shape[1] > 2:
            centred = loc - loc.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            pts, names = centred @ vt[:2].T, ("PC 1 of z", "PC 2 of z")
        elif loc.shape[1] == 2:
            pts, names = loc, ("z[0]", "z[1]")
        else:
            pts, names = np.column_stack([loc[:, 0], np.zeros(len(loc))]), ("z[0]", "")
        fig = Figure(figsize=(5, 5.6 if self.conditional else 5), layout="constrained")
        ax = fig.add_subplot()
        if labels is None:
            ax.scatter(pts[:, 0], pts[:, 1], s=4)
        else:
            labels = np.asarray(labels)
            for c in np.unique(labels):
                sel = labels == c
                ax.scatter(pts[sel, 0], pts[sel, 1], s=4, label=str(c))
            ax.legend(markerscale=3, fontsize="small", ncols=2)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_title("Latent posterior means")
        if self.conditional:
            fig.supxlabel(CONDITIONAL_LATENT_NOTE, fontsize="small", wrap=True)
        return fig

    def plot_interpolation(self, x1: Any, x2: Any, steps: int = 10, *, y: Any = None) -> Any:
        """A strip of images decoded along the latent line from ``x1`` to ``x2``, the two real images at its ends.

        Parameters
        ----------
        x1, x2 : array_like, shape (n_pixels,) or an image
        steps : int, default 10
            Decoded points, both ends of the line included (see :meth:`interpolate`).
        y : label, optional
            Class to decode with (conditional VAE).

        Returns
        -------
        matplotlib.figure.Figure
            One row of ``steps + 2`` images: ``x1`` (titled "real x1", framed
            in red), the decoded points titled by their position t on the
            line, then ``x2`` ("real x2").
        """
        from bayesgen.plots import plot_image_grid

        shape = self._plot_shape()
        path = self.interpolate(x1, x2, steps, y=y)
        ends = [np.asarray(x, dtype=np.float32).reshape(-1) for x in (x1, x2)]
        strip = np.concatenate([ends[0][None], path, ends[1][None]])
        labels = ["real x1", *(f"t={t:.2g}" for t in np.linspace(0.0, 1.0, len(path))), "real x2"]
        fig = plot_image_grid(strip[None], shape, col_labels=labels)
        for ax in (fig.axes[0], fig.axes[-1]):
            for spine in ax.spines.values():
                spine.set_color("#c0392b")
                spine.set_linewidth(2)
        return fig

    def _plot_shape(self) -> tuple[int, int]:
        if self.image_shape_ is None:
            raise ValueError("these rows are not images (no image_shape); pass image_shape=(h, w) to fit")
        return self.image_shape_


# ------------------------------------------------------------------ spec recipe
# How a run spec (bayesgen.runs.spec) fits this model; the registry entry names this function (``spec_fit``).
def fit_vae_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The VAE's spec recipe: images with a held-out split; report: held-out ELBO and IWAE bound."""
    from bayesgen.runs.spec import SpecFit, estimator_kwargs

    X_tr, y_tr, X_te, y_te, checksum = _spec_images(spec)
    est = VAE(**estimator_kwargs(VAE, spec, device))
    est.progress = progress
    labels = y_tr if est.conditional else None
    est.fit(X_tr, labels, **fit_kwargs)
    rep = spec["report"]
    k = int(rep.get("iwae_samples", 500))
    rows = min(int(rep.get("iwae_rows", 500)), len(X_te))
    test_labels = y_te if est.conditional else None
    elbo = est.elbo(X_te, test_labels, num_samples=int(rep.get("elbo_samples", 5)), seed=0)
    iwae = est.log_likelihood(X_te[:rows], None if test_labels is None else test_labels[:rows], num_samples=k, seed=0)
    values = {
        "train_rows": len(X_tr),
        "test_rows": len(X_te),
        "epochs_run": len(est.history_),
        "best_epoch": est.best_epoch_,
        "seconds_per_epoch": est.seconds_per_epoch_,
        "train_elbo_last_epoch": float(est.history_["train_elbo"].iloc[-1]),
        "test_elbo": float(elbo.mean()),
        f"test_iwae_k{k}_first_{rows}": float(iwae.mean()),
        f"test_elbo_first_{rows}": float(elbo[:rows].mean()),
        "latent_dims": int(est.latent_dim),
        # Posterior collapse: dimensions whose posterior mean does not move with the image (latent_activity).
        "active_latent_dims": est.latent_activity(
            X_te[:2000], None if test_labels is None else test_labels[:2000]
        ).attrs["active"],
    }
    if est.conditional:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=1000).fit(X_tr[:5000], y_tr[:5000])
        xs, ys = est.sample(100 * len(est.classes_), y="uniform", seed=int(spec["run"]["seed"]))
        values["conditional_sample_accuracy"] = float(np.mean(clf.predict(xs) == ys))
    report = pd.DataFrame({"value": values})
    figures: dict[str, Any] = {}
    if est.image_shape_ is not None:
        figures["samples"] = est.plot_samples(8, seed=int(spec["run"]["seed"]))
        figures["reconstructions"] = est.plot_reconstructions(
            X_te[:10], test_labels[:10] if test_labels is not None else None
        )
        figures["latent"] = est.plot_latent(
            X_te[:2000], y_te[:2000], y=None if test_labels is None else test_labels[:2000]
        )
        # Unconditional: two images of different classes. Conditional: two of the same class, decoded with their
        # label, so the frames move through style only (CONDITIONAL_INTERPOLATION_NOTE).
        other = (y_te == y_te[0]) if est.conditional else (y_te != y_te[0])
        other[0] = False
        i, j = 0, int(np.nonzero(other)[0][0])
        figures["interpolation"] = est.plot_interpolation(
            X_te[i], X_te[j], 10, y=None if test_labels is None else test_labels[i]
        )
    return SpecFit(est, checksum, report, figures)


def _spec_images(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Train/test images in [0, 1] for an image spec: digits, MNIST, or a labelled CSV."""
    from pathlib import Path

    from bayesgen.datasets import array_checksum, load_mnist, resolve_source
    from bayesgen.runs.spec import load_labelled_table, split_labelled

    data = spec["data"]
    source = str(data.get("source", ""))
    if source == "mnist" or source.startswith("mnist:"):
        path = source.split(":", 1)[1] if ":" in source else None
        if path:
            path = str(resolve_source(path, Path(spec["_path"]).parent))
        X_tr, y_tr, X_te, y_te = load_mnist(path)
        checksum = array_checksum(X_tr[:1000], y_tr[:1000])
    else:
        X, y, checksum = load_labelled_table(spec)
        X_tr, X_te, y_tr, y_te = split_labelled(spec, X, y, 0.2)
    limit = data.get("max_train_rows")
    if limit:
        X_tr, y_tr = X_tr[: int(limit)], y_tr[: int(limit)]
    return X_tr.astype(np.float32), y_tr, X_te.astype(np.float32), y_te, checksum
