r"""Joint charge + light NumPyro model, and its MAP + Laplace fit.

.. code-block:: text

    theta, z_dEdx, end_shift   as in lartpc_bayes.model.calibration_model (the same sites)
    hits   ~ LArPixReadout(expected_charge(segments, dEdx, theta))         charge site
    g      ~ Uniform(g_low, g_high)     only with fit_gain (else g = nominal)
    light  ~ Poisson(expected_pe(segments, dEdx, theta, g))                 light site

The charge part is the package's own :func:`lartpc_bayes.model.calibration_model`, called
unchanged inside a ``numpyro.handlers.trace``: the trace records the values of its sites as the
outer handlers (substitute, seed, the sampler's) set them, so the light site sees exactly the
same A_B, k_B, E and dE/dx latents; the per-segment dE/dx is rebuilt from the traced sites with
the model's own helpers (:func:`~lartpc_bayes.model.dEdx_from_z` through the ``dEdx``
deterministic site, :func:`~lartpc_bayes.model.stopping_dEdx`). Nothing of the charge model is
copied, and a change there reaches the joint model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..detector import PARAM_NAMES, DetectorParams
from ..model import CalibrationProblem, calibration_model, stopping_dEdx
from .card import LightCard
from .likelihood import LightPlan, expected_pe, poisson_gaussian_log_likelihood

GAIN_SITE = "light_gain"


def segment_dEdx(problem: CalibrationProblem, tr: dict) -> jax.Array:
    """Per-segment dE/dx (MeV/cm) from the traced sites of :func:`calibration_model`, as the
    charge model computes it."""
    n_seg = problem.seg_to_latent.size
    dEdx_seg = jnp.ones(n_seg)
    if problem.n_latent:
        dEdx_seg = tr["dEdx"]["value"][jnp.asarray(np.maximum(problem.seg_to_latent, 0))]
    st = problem.stopping
    if st is not None and st.n:
        seg, val = stopping_dEdx(st, tr["end_shift_cm"]["value"],
                                 problem.card.physics.lar_density_g_cm3)
        dEdx_seg = dEdx_seg.at[seg].set(val)
    return jnp.maximum(dEdx_seg, 1e-3)


def traced_params(problem: CalibrationProblem, tr: dict) -> DetectorParams:
    """The six parameters as the charge model used them (sampled or fixed)."""
    vals = []
    for p in PARAM_NAMES:
        if p in problem.fixed:
            vals.append(jnp.asarray(problem.fixed[p], jnp.float32))
        else:
            vals.append(tr[p]["value"])
    return DetectorParams(*vals)


def joint_model(problem: CalibrationProblem, light_plan: LightPlan, light_card: LightCard,
                hits=None, light=None, *, fit_gain: bool = False, with_charge: bool = True,
                noise: str = "poisson"):
    """Charge site (``hits``) + light site (``light``, (E, C) pe or None to simulate).

    ``with_charge=False`` keeps the priors and latents but drops the hit likelihood (a light-only
    posterior, for comparison). ``noise`` is ``poisson`` or ``poisson_gaussian``.
    """
    if light_plan.vis.shape[0] != problem.seg_to_latent.size:
        raise ValueError(f"the light plan has {light_plan.vis.shape[0]} segments, the charge "
                         f"problem {problem.seg_to_latent.size}: build both from the same segments")
    with numpyro.handlers.trace() as tr:
        if with_charge:
            calibration_model(problem, hits)
        else:  # the hit site is hidden from every outer handler: not in the potential
            with numpyro.handlers.block(hide=["hits"]):
                calibration_model(problem, hits)
    params = traced_params(problem, tr)
    dEdx_seg = segment_dEdx(problem, tr)
    if fit_gain:
        g = numpyro.sample(GAIN_SITE, dist.Uniform(light_card.gain_low, light_card.gain_high))
    else:
        g = light_card.gain_nominal
    mu = expected_pe(light_plan, dEdx_seg, params, problem.card.physics, light_card, g)
    mu = numpyro.deterministic("light_mu", mu)
    if noise == "poisson":
        numpyro.sample("light", dist.Poisson(mu).to_event(2), obs=light)
    elif noise == "poisson_gaussian":
        sd = jnp.sqrt(light_card.excess_noise_factor * mu + light_card.sigma_pe**2)
        if light is None:
            numpyro.sample("light", dist.Normal(mu, sd).to_event(2))
        else:
            numpyro.factor("light", poisson_gaussian_log_likelihood(
                mu, light, light_card.excess_noise_factor, light_card.sigma_pe))
    else:
        raise ValueError(f"noise must be poisson or poisson_gaussian, got {noise!r}")


def fit_joint(problem: CalibrationProblem, light_plan: LightPlan, light_card: LightCard,
              light_pe: np.ndarray | None, *, use_light: bool = True, fit_gain: bool = False,
              seed: int = 0, num_samples: int = 2000, scan_E: bool = True) -> dict:
    """MAP + Laplace posterior of the charge model alone (``use_light=False``) or of the joint
    charge + light model, from the same start (E from the charge-only drift-field scan, as
    :func:`lartpc_bayes.infer.run_laplace`), by :class:`lartpc_bayes.infer.LaplaceFitter` with the
    joint model. Returns ``{"samples": site -> (draws, ...), "map": site -> value, "cov" (the
    unconstrained Laplace covariance), "evals", "newton_decrement", "fit_s", "iterations"}``."""
    from ..infer import LaplaceFitter, drift_field_scan, nominal_init

    init = nominal_init(problem)
    if scan_E:
        init = drift_field_scan(problem, init, seed=seed)
    if not use_light:
        model, kw = calibration_model, {}
    else:
        if fit_gain:
            init = {**init, GAIN_SITE: jnp.asarray(light_card.gain_nominal, jnp.float32)}
        model = joint_model
        kw = {"light_plan": light_plan, "light_card": light_card,
              "light": jnp.asarray(light_pe, jnp.float32), "fit_gain": fit_gain}
    # the package's one MAP + Laplace fitter, on the joint model's potential
    fitter = LaplaceFitter(problem, model=model, model_kwargs=kw, init=init, maxiter=400)
    fit = fitter.fit(problem.table, seed=seed, num_draws=num_samples, scan_E=False)
    if not fit["ok"]:
        raise np.linalg.LinAlgError(fit.get("error", "Laplace fit failed"))
    drop = ("hits", "light", "light_mu")
    return {"samples": {k: v for k, v in fit["draws"].items() if k not in drop},
            "map": {k: v for k, v in fit["map"].items() if k not in drop},
            "cov": fit["cov_unconstrained"], "evals": fit["hessian_eigenvalues"],
            "newton_decrement": fit["newton_decrement"], "fit_s": fit["map_s"] + fit["hessian_s"],
            "iterations": fit["iterations"]}
