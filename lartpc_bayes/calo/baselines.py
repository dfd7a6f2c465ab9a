"""The talk-004 baselines as Bayesian regression models in NumPyro.

Three calibrations of the EM-scale layer energies ``x_i`` [GeV] to the incident energy [GeV]:

* ``sum``: ``E = sum_i x_i`` (no parameters);
* ``linear``: ``E = alpha * sum_i x_i + beta`` (2 parameters);
* ``perlayer``: ``E = sum_i w_i x_i + beta`` (``L + 1 = 51`` parameters, talk 004's "neural net
  with no hidden layers").

The two fitted ones are one NumPyro model with features ``X`` ((N, 1) sum, or (N, L) layers):
``w ~ Normal(m, s)`` per feature, ``beta ~ Normal(0, s_beta)`` and ``mu = X w + beta``, with one of
four likelihoods for ``E_true`` given ``mu``:

* ``absolute``: ``E_true ~ Normal(mu, sigma)`` -- least squares on absolute residuals;
* ``relative``: ``E_true ~ Normal(mu, sigma_rel E_true)`` -- least squares on relative residuals
  ``(mu - E)/E`` (the ``E_true`` in the width only adds a parameter-free term to the log density);
* ``resolution``: ``E_true ~ Normal(mu, sigma(mu))`` with the calorimeter resolution shape
  ``sigma(mu)^2 = a^2 mu + b^2 + c^2 mu^2``; ``a`` [GeV^1/2], ``b`` [GeV], ``c`` are fitted with
  the weights, so the posterior also measures the stochastic, noise and constant terms achieved;
* ``robust``: the resolution likelihood mixed with a wide outlier component,
  ``(1 - eps) Normal(mu, sigma(mu)) + eps Normal(mu, sqrt(sigma(mu)^2 + (s_out mu)^2))``. A photon
  that converts deep in the stack (``t0`` of 15-18 X0, a few per 1e5 events) leaks 80-90 % of its
  energy; under the pure Gaussian such an event costs ~1e4 nats and drags the back-layer weights
  and ``a`` (docs/calorimeter.md). The outlier component keeps ``a, b, c`` the core resolution.

Why relative residuals at low energy: on a wide (log-uniform, 1-500 GeV) spectrum, absolute
residuals weight an event by 1, so the fit is decided by high-energy events whose absolute errors
are largest; a constant offset ``beta`` of -0.5 GeV is invisible there but is a 30-50 % bias at
1-2 GeV. Relative (or resolution-shaped) residuals weight each event by ``1/sigma_E^2``, i.e. each
energy decade equally in the quantity the metrics measure (``E_model/E_true``).

Inference. The MAP and the Hessian of the potential (negative log joint in NumPyro's unconstrained
space) come from a damped Newton iteration in float64. ``laplace`` draws from the Gaussian
``N(MAP, H^-1)``; ``nuts`` runs NUTS from Laplace draws with the dense mass matrix initialised to
``H^-1`` (whitening the strong layer-to-layer correlations before adaptation) on a subsample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro.diagnostics import summary as numpyro_summary
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.util import initialize_model
from scipy.special import ndtr

from .card import Calibration
from .mixture import mixture_sigma68

KINDS: tuple[str, ...] = ("linear", "perlayer")
LIKELIHOODS: tuple[str, ...] = ("absolute", "relative", "resolution", "robust")
_WIDTH_SITES: dict[str, tuple[str, ...]] = {
    "absolute": ("sigma",),
    "relative": ("sigma_rel",),
    "resolution": ("a", "b", "c"),
    "robust": ("a", "b", "c", "outlier_frac", "outlier_width"),
}


def em_sum(layers: np.ndarray) -> np.ndarray:
    """Talk-004 baseline ``E = sum_i x_i`` [GeV] (accumulated in float64)."""
    return np.asarray(layers, dtype=np.float64).sum(axis=1)


def features(kind: str, layers: np.ndarray) -> np.ndarray:
    """Regression features: (N, 1) layer sum for ``linear``, (N, L) layers for ``perlayer``."""
    if kind == "linear":
        return em_sum(layers)[:, None]
    if kind == "perlayer":
        return np.asarray(layers, dtype=np.float64)
    raise ValueError(f"unknown baseline kind {kind!r}; expected one of {KINDS}")


def resolution_sigma(mu: Any, a: Any, b: Any, c: Any) -> Any:
    """``sigma_E = sqrt(a^2 max(mu, 0) + b^2 + c^2 mu^2)`` [GeV] for a predicted energy ``mu``."""
    return jnp.sqrt(a**2 * jnp.maximum(mu, 0.0) + b**2 + (c * mu) ** 2)


class CoreOutlierNormal(dist.Distribution):
    """``(1 - frac) Normal(loc, core) + frac Normal(loc, wide)``, a two-width Gaussian mixture.

    Same density as a ``MixtureSameFamily`` of two Normals, written with one ``logaddexp``: its
    Hessian over 5e5 events (forward over reverse mode, for the Laplace step) costs 3x less.
    """

    arg_constraints = {  # noqa: RUF012 (NumPyro's class-attribute convention)
        "loc": constraints.real,
        "core": constraints.positive,
        "wide": constraints.positive,
        "frac": constraints.unit_interval,
    }
    support = constraints.real

    def __init__(
        self, loc: Any, core: Any, wide: Any, frac: Any, *, validate_args: bool | None = None
    ) -> None:
        self.loc, self.core, self.wide, self.frac = promote_shapes(loc, core, wide, frac)
        shape = jax.lax.broadcast_shapes(*(jnp.shape(v) for v in (loc, core, wide, frac)))
        super().__init__(batch_shape=shape, validate_args=validate_args)

    def log_prob(self, value: Any) -> Any:
        z_core = (value - self.loc) / self.core
        z_wide = (value - self.loc) / self.wide
        log_core = jnp.log1p(-self.frac) - 0.5 * z_core**2 - jnp.log(self.core)
        log_wide = jnp.log(self.frac) - 0.5 * z_wide**2 - jnp.log(self.wide)
        return jnp.logaddexp(log_core, log_wide) - 0.5 * jnp.log(2.0 * jnp.pi)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> Any:
        k_pick, k_norm = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        wide = jax.random.bernoulli(k_pick, self.frac, shape)
        return self.loc + jnp.where(wide, self.wide, self.core) * jax.random.normal(k_norm, shape)


def calibration_model(
    x: jnp.ndarray,
    e_true: jnp.ndarray | None = None,
    *,
    prior: Calibration,
    likelihood: str,
) -> None:
    """NumPyro model ``E_true ~ Normal(x w + beta, width)`` (module docstring for the widths).

    ``x`` (N, K) features [GeV]; ``w`` gets ``prior.alpha_prior`` when ``K == 1`` and
    ``prior.weight_prior`` otherwise. Without ``e_true`` the relative width uses ``|mu|``.
    """
    k = x.shape[1]
    loc, scale = prior.alpha_prior if k == 1 else prior.weight_prior
    w = numpyro.sample("w", dist.Normal(loc, scale).expand([k]).to_event(1))
    beta = numpyro.sample("beta", dist.Normal(0.0, prior.offset_prior_gev))
    mu = x @ w + beta
    if likelihood == "absolute":
        width = numpyro.sample("sigma", dist.HalfNormal(prior.absolute_sigma_prior_gev))
        width = jnp.broadcast_to(width, mu.shape)
    elif likelihood == "relative":
        s = numpyro.sample("sigma_rel", dist.HalfNormal(prior.relative_sigma_prior))
        width = s * (jnp.abs(mu) if e_true is None else e_true)
    elif likelihood in ("resolution", "robust"):
        a = numpyro.sample("a", dist.HalfNormal(prior.stochastic_prior))
        b = numpyro.sample("b", dist.HalfNormal(prior.noise_prior_gev))
        c = numpyro.sample("c", dist.HalfNormal(prior.constant_prior))
        width = resolution_sigma(mu, a, b, c)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    if likelihood == "robust":
        eps = numpyro.sample("outlier_frac", dist.Beta(*prior.outlier_fraction_prior))
        s_out = numpyro.sample("outlier_width", dist.HalfNormal(prior.outlier_width_prior))
        obs_dist = CoreOutlierNormal(mu, width, jnp.sqrt(width**2 + (s_out * mu) ** 2), eps)
    else:
        obs_dist = dist.Normal(mu, width)
    with numpyro.plate("events", x.shape[0]):
        numpyro.sample("e_true", obs_dist, obs=e_true)


@dataclass(frozen=True)
class CalibrationFit:
    """Posterior draws of a fitted baseline and how they were obtained.

    ``samples`` maps site names to arrays with a leading draw axis: ``w`` (S, K), ``beta`` (S,) and
    the width parameters (``sigma`` | ``sigma_rel`` | ``a, b, c``). ``diagnostics`` holds run time,
    number of events, Newton iterations and, for NUTS, divergences, max R-hat and min bulk ESS.
    """

    kind: str
    likelihood: str
    method: str
    samples: dict[str, np.ndarray]
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.likelihood}_{self.method}"

    def mean(self) -> dict[str, np.ndarray]:
        """Posterior means of all sites."""
        return {k: np.mean(v, axis=0) for k, v in self.samples.items()}

    def std(self) -> dict[str, np.ndarray]:
        """Posterior standard deviations of all sites."""
        return {k: np.std(v, axis=0, ddof=1) for k, v in self.samples.items()}

    def predictive(self, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictive distribution of ``E_true - E_model`` per event as a Gaussian mixture.

        Returns ``E_model`` (N,) = ``x E[w] + E[beta]`` (the posterior mean of ``mu``, linear in the
        parameters), log-weights and widths (N, K) [GeV] of zero-mean components: one for the
        Gaussian likelihoods, core and outlier for ``robust``. A width squared is the likelihood
        variance averaged over the posterior plus the parameter uncertainty
        ``Var_post(mu) = x~ Cov(w, beta) x~^T`` (``x~ = (x, 1)``).
        """
        x = features(self.kind, layers)
        theta = np.concatenate([self.samples["w"], self.samples["beta"][:, None]], axis=1)
        xt = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        mu = xt @ theta.mean(axis=0)
        cov = np.atleast_2d(np.cov(theta, rowvar=False))
        var_param = np.einsum("ni,ij,nj->n", xt, cov, xt)
        s = self.samples
        if self.likelihood == "absolute":
            width2 = np.full_like(mu, np.mean(s["sigma"] ** 2))
        elif self.likelihood == "relative":
            width2 = np.mean(s["sigma_rel"] ** 2) * mu**2
        else:
            width2 = (
                np.mean(s["a"] ** 2) * np.maximum(mu, 0.0)
                + np.mean(s["b"] ** 2)
                + np.mean(s["c"] ** 2) * mu**2
            )
        core = np.sqrt(width2 + var_param)
        if self.likelihood != "robust":
            return mu, np.zeros((mu.size, 1)), core[:, None]
        eps = float(np.mean(s["outlier_frac"]))
        wide = np.sqrt(width2 + np.mean(s["outlier_width"] ** 2) * mu**2 + var_param)
        log_w = np.broadcast_to(np.log([1.0 - eps, eps]), (mu.size, 2))
        return mu, log_w, np.stack([core, wide], axis=1)

    def predict(self, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated energy ``E_model`` and ``sigma_68`` per event [GeV]: half the central 68.27 %
        interval of the predictive distribution (its sd when it is a single Gaussian)."""
        mu, log_w, scale = self.predictive(layers)
        if scale.shape[1] == 1:
            return mu, scale[:, 0]
        sig = mixture_sigma68(jnp.asarray(log_w), jnp.zeros(scale.shape), jnp.asarray(scale))
        return mu, np.asarray(sig, dtype=np.float64)

    def pit(self, layers: np.ndarray, e_true: np.ndarray) -> np.ndarray:
        """PIT ``u = F(E_true - E_model)`` of the predictive distribution."""
        mu, log_w, scale = self.predictive(layers)
        resid = np.asarray(e_true, dtype=np.float64) - mu
        if scale.shape[1] == 1:
            return ndtr(resid / scale[:, 0])
        return np.sum(np.exp(log_w) * ndtr(resid[:, None] / scale), axis=1)

    def to_tree(self) -> dict[str, Any]:
        """Arrays and strings for :func:`lartpc_bayes.calo.io.write_tree`."""
        return {
            "kind": self.kind,
            "likelihood": self.likelihood,
            "method": self.method,
            "samples": dict(self.samples),
            "diagnostics": {k: np.asarray(v) for k, v in self.diagnostics.items()},
        }

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> CalibrationFit:
        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        return cls(
            kind=text(tree["kind"]),
            likelihood=text(tree["likelihood"]),
            method=text(tree["method"]),
            samples={k: np.asarray(v) for k, v in tree["samples"].items()},
            diagnostics={k: float(v) for k, v in tree.get("diagnostics", {}).items()},
        )

    def to_datatree(self, n_chains: int = 1) -> Any:
        """The draws as an ArviZ ``DataTree`` (``posterior`` group, ``n_chains`` x draws)."""
        import arviz as az

        post = {
            k: v.reshape((n_chains, v.shape[0] // n_chains, *v.shape[1:]))
            for k, v in self.samples.items()
        }
        return az.from_dict({"posterior": post})


def _init_values(kind: str, x: np.ndarray, e: np.ndarray, likelihood: str) -> dict[str, Any]:
    """Starting point of the MAP search: weights from relative least squares, widths from data."""
    xt = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1) / e[:, None]
    theta, *_ = np.linalg.lstsq(xt, np.ones_like(e), rcond=None)
    mu = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1) @ theta
    res = e - mu
    init: dict[str, Any] = {"w": theta[:-1], "beta": theta[-1]}
    if likelihood == "absolute":
        init["sigma"] = np.std(res)
    elif likelihood == "relative":
        init["sigma_rel"] = np.std(res / e)
    else:
        init.update(a=0.2, b=0.1, c=0.01)
    if likelihood == "robust":
        init.update(outlier_frac=0.01, outlier_width=0.3)
    return init


@dataclass(frozen=True)
class _Laplace:
    map_z: np.ndarray  # flat unconstrained MAP
    cov: np.ndarray  # inverse Hessian of the potential at the MAP
    iterations: int
    unravel: Any
    postprocess: Any


def _laplace(
    kind: str,
    x: np.ndarray,
    e: np.ndarray,
    prior: Calibration,
    likelihood: str,
    max_iter: int = 200,
) -> _Laplace:
    """MAP by damped Newton with backtracking in float64, and the Hessian there."""
    with jax.enable_x64(True):
        xj, ej = jnp.asarray(x, jnp.float64), jnp.asarray(e, jnp.float64)
        model = partial(calibration_model, prior=prior, likelihood=likelihood)
        init = {
            k: jnp.asarray(v, jnp.float64) for k, v in _init_values(kind, x, e, likelihood).items()
        }
        params, potential_fn, postprocess, _ = initialize_model(
            jax.random.PRNGKey(0),
            model,
            model_args=(xj, ej),
            init_strategy=init_to_value(values=init),
        )
        v, unravel = ravel_pytree(params.z)

        def pot(flat: jnp.ndarray) -> jnp.ndarray:
            return potential_fn(unravel(flat))

        value_grad = jax.jit(jax.value_and_grad(pot))
        hessian = jax.jit(jax.hessian(pot))
        v = np.asarray(v)
        damping = 0.0
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007 (iteration count is reported)
            f0, g = (np.asarray(t) for t in value_grad(v))
            h = np.asarray(hessian(v))
            h = 0.5 * (h + h.T)
            while True:
                try:
                    chol = np.linalg.cholesky(h + damping * np.eye(h.shape[0]))
                    break
                except np.linalg.LinAlgError:
                    damping = max(10 * damping, 1e-6 * np.abs(np.diag(h)).max())
            step = -np.linalg.solve(chol.T, np.linalg.solve(chol, g))
            decrement = float(-g @ step)
            t = 1.0
            while t > 1e-10:
                f1 = float(value_grad(v + t * step)[0])
                if np.isfinite(f1) and f1 <= f0 - 1e-4 * t * decrement:
                    break
                t *= 0.5
            v = v + t * step
            damping *= 0.1 if t == 1.0 else 1.0
            if decrement < 1e-8 * max(1.0, abs(f0)) or decrement < 1e-6:
                break
        h = np.asarray(hessian(v))
        h = 0.5 * (h + h.T)
        cov = np.linalg.inv(h)
        cov = 0.5 * (cov + cov.T)
        return _Laplace(v, cov, it, unravel, postprocess)


def _constrain(lap: _Laplace, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Map unconstrained flat draws (S, D) to constrained site values (float64 arithmetic)."""
    with jax.enable_x64(True):
        fn = jax.jit(jax.vmap(lambda v: lap.postprocess(lap.unravel(v))))
        out = fn(jnp.asarray(flat, jnp.float64))
        return {k: np.asarray(v) for k, v in out.items()}


def fit_laplace(
    kind: str,
    layers: np.ndarray,
    e_true: np.ndarray,
    prior: Calibration,
    likelihood: str = "resolution",
    *,
    draws: int | None = None,
    seed: int = 0,
) -> CalibrationFit:
    """Laplace approximation of the posterior: ``N(MAP, H^-1)`` in the unconstrained space."""
    t0 = time.perf_counter()
    x, e = features(kind, layers), np.asarray(e_true, dtype=np.float64)
    lap = _laplace(kind, x, e, prior, likelihood)
    rng = np.random.default_rng(seed)
    n_draws = prior.laplace_draws if draws is None else draws
    z = rng.multivariate_normal(lap.map_z, lap.cov, size=n_draws, method="cholesky")
    samples = _constrain(lap, z)
    diag = {
        "n_events": float(x.shape[0]),
        "newton_iterations": float(lap.iterations),
        "runtime_s": time.perf_counter() - t0,
    }
    return CalibrationFit(kind, likelihood, "laplace", samples, diag)


def fit_nuts(
    kind: str,
    layers: np.ndarray,
    e_true: np.ndarray,
    prior: Calibration,
    likelihood: str = "resolution",
    *,
    warmup: int | None = None,
    samples: int | None = None,
    chains: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationFit:
    """NUTS (float32) started from Laplace draws, dense mass matrix initialised to ``H^-1``.

    Chains run sequentially (one process cannot set the host device count after JAX started).
    """
    t0 = time.perf_counter()
    x, e = features(kind, layers), np.asarray(e_true, dtype=np.float64)
    lap = _laplace(kind, x, e, prior, likelihood)
    n_chains = prior.nuts_chains if chains is None else chains
    rng = np.random.default_rng(seed)
    start = rng.multivariate_normal(lap.map_z, lap.cov, size=n_chains, method="cholesky")
    init = jax.vmap(lap.unravel)(jnp.asarray(start, jnp.float32))
    kernel = NUTS(
        partial(calibration_model, prior=prior, likelihood=likelihood),
        dense_mass=True,
        inverse_mass_matrix=jnp.asarray(lap.cov, jnp.float32),
        adapt_mass_matrix=False,
        target_accept_prob=0.85,
        max_tree_depth=8,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=prior.nuts_warmup if warmup is None else warmup,
        num_samples=prior.nuts_samples if samples is None else samples,
        num_chains=n_chains,
        chain_method="sequential",
        progress_bar=progress,
    )
    mcmc.run(
        jax.random.PRNGKey(seed),
        jnp.asarray(x, jnp.float32),
        jnp.asarray(e, jnp.float32),
        init_params=init,
        extra_fields=("diverging", "num_steps"),
    )
    grouped = mcmc.get_samples(group_by_chain=True)
    summ = numpyro_summary({k: np.asarray(v) for k, v in grouped.items()})
    extra = mcmc.get_extra_fields()
    diag = {
        "n_events": float(x.shape[0]),
        "newton_iterations": float(lap.iterations),
        "runtime_s": time.perf_counter() - t0,
        "divergences": float(np.sum(extra["diverging"])),
        "mean_leapfrog_steps": float(np.mean(extra["num_steps"])),
        "r_hat_max": float(max(np.max(s["r_hat"]) for s in summ.values())),
        "ess_bulk_min": float(min(np.min(s["n_eff"]) for s in summ.values())),
        "chains": float(n_chains),
    }
    flat = {k: np.asarray(v, dtype=np.float64) for k, v in mcmc.get_samples().items()}
    return CalibrationFit(kind, likelihood, "nuts", flat, diag)


def width_parameters(fit: CalibrationFit) -> dict[str, tuple[float, float]]:
    """Posterior mean and sd of the likelihood-width parameters of a fit."""
    mean, sd = fit.mean(), fit.std()
    return {k: (float(mean[k]), float(sd[k])) for k in _WIDTH_SITES[fit.likelihood]}


__all__ = [
    "KINDS",
    "LIKELIHOODS",
    "CalibrationFit",
    "calibration_model",
    "em_sum",
    "features",
    "fit_laplace",
    "fit_nuts",
    "resolution_sigma",
    "width_parameters",
]
