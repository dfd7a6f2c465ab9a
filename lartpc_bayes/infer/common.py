"""What every inference method shares: the FitResult container, start values, NumPyro's
potential and transforms, the Hessian pseudo-correlation of talk 002 (computed the old way, for
comparison), predictive and prior draws, and host-device setup for parallel chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro.infer import Predictive, init_to_value
from numpyro.infer.util import initialize_model

from ..detector import PARAM_NAMES
from ..model import LATENT_SITES, CalibrationProblem, calibration_model


@dataclass
class FitResult:
    """Posterior draws (physical units) plus what produced them.

    samples : site -> array (chains, draws, ...) for MCMC, (1, draws, ...) for SVI
    stats   : sample-stat name -> (chains, draws) arrays (NUTS: diverging, energy, ...)
    """

    method: str
    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    map_values: dict[str, np.ndarray] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _model_kwargs(problem: CalibrationProblem) -> dict[str, Any]:
    if problem.table is None:
        raise ValueError("the problem has no observed hits (build it with hits=...)")
    return {"hits": jnp.asarray(problem.table)}


def nominal_init(problem: CalibrationProblem) -> dict[str, jnp.ndarray]:
    """Initial values: the card's nominal parameters and dE/dx at the prior location."""
    nom = problem.card.nominal()
    init = {p: jnp.asarray(nom[p], jnp.float32) for p in problem.free}
    if problem.n_latent:
        init["z_dEdx"] = jnp.zeros(problem.n_latent, jnp.float32)
    if problem.stopping is not None:
        init["end_shift_cm"] = jnp.zeros(problem.stopping.n, jnp.float32)
    geo = getattr(problem, "geometry", None)  # geometry latents at the reconstructed tracks
    if geo is not None and geo.n_tracks:
        init["geo_z"] = jnp.zeros((geo.n_tracks, 3), jnp.float32)
    if geo is not None and geo.has_tilt:
        init["geo_tilt_z"] = jnp.zeros((geo.n_tracks, 2), jnp.float32)
    if geo is not None and geo.tpc_offset_sd > 0:
        init["tpc_drift_offset_cm"] = jnp.zeros(geo.n_tpc, jnp.float32)
    return init


def potential_and_transforms(problem: CalibrationProblem, seed: int = 0, init: dict | None = None):
    """(potential_fn on unconstrained dict, postprocess_fn, initial unconstrained point)."""
    info, potential_fn, postprocess_fn, _ = initialize_model(
        jax.random.key(seed),
        calibration_model,
        model_args=(problem,),
        model_kwargs=_model_kwargs(problem),
        init_strategy=init_to_value(values=init or nominal_init(problem)),
    )
    return potential_fn, postprocess_fn, info.z


def hessian_pseudo_correlation(
    problem: CalibrationProblem, map_values: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian "pseudo-correlation" of talk 002, computed the old way.

    At the optimum, the negative log posterior is differentiated twice with respect to the free
    calibration parameters in units of their nominal values (theta / theta_nominal), the dE/dx
    latents held at their optimum; the inverse of that normalised Hessian is scaled to unit
    diagonal. Returns (correlation, sd in physical units from the inverse Hessian).
    """
    from numpyro.infer.util import log_density

    nom = problem.card.nominal()
    free = problem.free
    kw = _model_kwargs(problem)
    base = {k: jnp.asarray(v) for k, v in map_values.items() if k in (*free, *LATENT_SITES)}

    def nlp(x):
        vals = dict(base)
        for i, p in enumerate(free):
            vals[p] = x[i] * nom[p]
        ld, _ = log_density(calibration_model, (problem,), kw, vals)
        return -ld

    x0 = jnp.asarray([float(base[p]) / nom[p] for p in free])
    H = np.asarray(jax.jit(jax.hessian(nlp))(x0), np.float64)
    if not np.all(np.isfinite(H)):
        raise FloatingPointError("the Hessian of the negative log posterior is not finite")
    return _pseudo_correlation(H, np.array([nom[p] for p in free], np.float64))


#: eigenvalues of the normalised Hessian below this fraction of the largest are taken as flat
#: directions (float32 potentials: curvature below ~1e-7 of the largest is rounding)
PSEUDO_RCOND = 1e-7
#: a parameter whose squared loading on a flat direction exceeds this has no pseudo-correlation
FLAT_LOADING = 0.01


def _pseudo_correlation(H_y: np.ndarray, nom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, sd in physical units) from the Hessian ``H_y`` of the negative log
    posterior in units of the nominal values ``nom``: its inverse on the eigen-directions with
    curvature above ``PSEUDO_RCOND`` of the largest, scaled to unit diagonal. Parameters that
    load on a flat or negative direction (squared loading > ``FLAT_LOADING``; e.g. A_B and k_B
    at fixed dE/dx, where only their ratio is measured) get NaN ("n/a") rows, columns and sd:
    the pseudo-inverse would print a spurious +-1 (or |r| > 1 from rounding) there."""
    evals, evecs = np.linalg.eigh(0.5 * (H_y + H_y.T))
    keep = evals > PSEUDO_RCOND * max(float(np.max(np.abs(evals), initial=0.0)), 1e-300)
    cov = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    flat = np.sum(evecs[:, ~keep] ** 2, axis=1) > FLAT_LOADING
    cov[flat, :] = np.nan
    cov[:, flat] = np.nan
    corr, sd_norm = cov_to_corr(cov)
    return corr, sd_norm * nom


def hessian_by_columns(f, x: jax.Array, batch_size: int = 1) -> jax.Array:
    """Exact Hessian of a scalar ``f`` at ``x`` (n,), forward-over-reverse, column by column.

    Column j is ``jvp(grad f, x, e_j)`` in a ``lax.map`` (a loop), ``batch_size`` columns per
    step. One per step (the default): unlike ``jax.hessian``, which vmaps all n tangents, XLA
    compiles one Hessian-vector product, not a batched copy of the gradient tape (on 30 cm of
    track: 51 s and 2.6 GB of compilation against 119 s and 4.7 GB for four columns at once,
    docs/inference.md)."""
    g = jax.grad(f)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    column = lambda v: jax.jvp(g, (x,), (v,))[1]  # noqa: E731
    if batch_size <= 1:
        return jax.lax.map(column, eye)
    return jax.lax.map(column, eye, batch_size=min(batch_size, x.shape[0]))


def _flat_index(z: dict, site: str) -> int:
    """Position of a scalar ``site`` in the flat unconstrained vector."""
    marked = {k: jnp.zeros_like(v) for k, v in z.items()}
    marked[site] = jnp.ones_like(z[site])
    return int(np.argmax(np.asarray(ravel_pytree(marked)[0])))


def pseudo_correlation_from_hessian(
    problem: CalibrationProblem, unravel, x: np.ndarray, H: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""The Hessian pseudo-correlation of talk 002 (:func:`~lartpc_bayes.infer.common.
    hessian_pseudo_correlation`) from the Laplace fit's Hessian, without compiling another one.

    The potential is :math:`U(x) = \mathrm{nlp}(\theta(x)) - \sum_i \log\theta_i'(x_i)` with
    :math:`\theta_i = lo_i + w_i\,\sigma(x_i)` for every free parameter (NumPyro's bijection of its
    uniform prior) and nlp the negative log posterior at fixed latents. With
    :math:`J_i = \log\theta_i'`, :math:`J_i' = 1 - 2\sigma`, :math:`J_i'' = -2\sigma(1-\sigma)`,
    :math:`\theta_i'' = w\sigma(1-\sigma)(1-2\sigma)` and
    :math:`g^\theta_i = (g_i + J_i')/\theta_i'`:

    .. math:: \partial^2_{\theta_i\theta_j}\mathrm{nlp} = \frac{H_{ij} + \delta_{ij}J_i''}
              {\theta_i'\theta_j'} - \delta_{ij}\,\frac{g^\theta_i\,\theta_i''}{\theta_i'^2}

    (the latent rows of H are not used: the latents are held at the optimum). In units of the
    nominal values (:math:`y = \theta/\theta_\mathrm{nom}`) the inverse is scaled to unit diagonal.
    x, H, g : unconstrained point, Hessian and gradient of U there. Returns (correlation, sd in
    physical units), as :func:`hessian_pseudo_correlation`.
    """
    z = unravel(jnp.asarray(x, jnp.float32))
    idx = np.array([_flat_index(z, p) for p in problem.free], np.int64)
    return pseudo_correlation_from_theta_block(
        problem.card, list(problem.free), np.asarray(x, np.float64)[idx],
        np.asarray(H, np.float64)[np.ix_(idx, idx)], np.asarray(g, np.float64)[idx])


def pseudo_correlation_from_theta_block(card, free: list[str], x: np.ndarray, H: np.ndarray,
                                        g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pseudo_correlation_from_hessian` from theta's own rows: ``x`` (k,) unconstrained
    theta, ``H`` (k, k) the theta-theta block of the potential's Hessian, ``g`` (k,) its gradient
    (the block-arrow Laplace's A block, :mod:`lartpc_bayes.infer.block_laplace`)."""
    x = np.asarray(x, np.float64)
    lo = np.array([card.param(p).low for p in free], np.float64)
    w = np.array([card.param(p).high for p in free], np.float64) - lo
    nom = np.array([card.nominal()[p] for p in free], np.float64)
    sg = 1.0 / (1.0 + np.exp(-x))
    d1 = w * sg * (1.0 - sg)
    d2 = d1 * (1.0 - 2.0 * sg)
    g_theta = (np.asarray(g, np.float64) + (1.0 - 2.0 * sg)) / d1
    Hs = np.asarray(H, np.float64) + np.diag(-2.0 * sg * (1.0 - sg))
    H_theta = Hs / np.outer(d1, d1) - np.diag(g_theta * d2 / d1**2)
    return _pseudo_correlation(H_theta * np.outer(nom, nom), nom)


def cov_to_corr(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, sd) of a covariance; NaN rows/columns where the variance is not > 0 (a
    Hessian that is not positive definite along that parameter)."""
    cov = np.asarray(cov, np.float64)
    d = np.diag(cov)
    ok = np.isfinite(d) & (d > 0)
    sd = np.where(ok, np.sqrt(np.where(ok, d, 1.0)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd), sd


def predictive_hits(
    problem: CalibrationProblem,
    samples: dict[str, np.ndarray],
    *,
    seed: int = 0,
    num_draws: int = 200,
) -> np.ndarray:
    """Posterior-predictive hit tables: parameters and dE/dx drawn from ``samples``, the
    stochastic readout run once per draw. Returns (num_draws, channels, M, 2)."""
    flat = {
        k: np.asarray(v).reshape((-1, *np.asarray(v).shape[2:]))
        for k, v in samples.items()
        if k in (*problem.free, *LATENT_SITES)
    }
    n = next(iter(flat.values())).shape[0]
    idx = np.random.default_rng(seed).choice(n, size=min(num_draws, n), replace=False)
    sub = {k: jnp.asarray(v[idx]) for k, v in flat.items()}
    pred = Predictive(
        calibration_model, posterior_samples=sub, return_sites=["hits"], batch_ndims=1
    )
    return np.asarray(pred(jax.random.key(seed), problem, hits=None)["hits"])


def prior_samples(
    problem: CalibrationProblem, *, seed: int = 0, num_samples: int = 200
) -> dict[str, np.ndarray]:
    """Prior draws of the parameters, dE/dx and the prior-predictive hit table."""
    pred = Predictive(calibration_model, num_samples=num_samples)
    out = pred(jax.random.key(seed), problem, hits=None)
    return {k: np.asarray(v) for k, v in out.items()}


def param_array(samples: dict[str, np.ndarray], names=PARAM_NAMES) -> np.ndarray:
    """Stack the free calibration parameters present in ``samples``: (chains*draws, n)."""
    cols = [np.asarray(samples[p]).reshape(-1) for p in names if p in samples]
    return np.stack(cols, axis=1)


def set_host_devices(n: int | None = None) -> None:
    """Expose ``n`` (default: all cores) CPU devices for parallel chains; call before JAX starts."""
    import os

    numpyro.set_host_device_count(n or os.cpu_count() or 1)
