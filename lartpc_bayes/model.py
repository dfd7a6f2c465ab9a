r"""The NumPyro calibration model: priors, latent dE/dx, and the hits as an observed site.

.. code-block:: text

    theta_p ~ Uniform(low_p, high_p)        p in (A_B, k_B, E, tau, D_L, D_T), unless fixed
    z_l     ~ SplitStudentT(nu_L, nu_R, s_L/s, s_R/s)    one per latent segment l (non-centred)
    dEdx_l  = loc + s z_l                    (MeV/cm; deterministic site "dEdx")
    hits    ~ LArPixReadout(expected_charge(segments, dEdx, theta))

NumPyro maps each uniform prior to the unconstrained real line with a scaled logit, so samplers work
in a normalised unconstrained space. A latent segment groups the consecutive segments of one track
over ``latent_length_cm`` of track (talk 000: fine latents overfit). The MIP prior is the published
split Student-t fit to muon segments (DESIGN.md section 5): nu_L 4.785, nu_R 2.073,
loc 1.874 MeV/cm, s_L 0.1204, s_R 0.1058.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints

from .data import Hits, Segments
from .detector import PARAM_NAMES, DetectorCard
from .detector.physics import DetectorParams, recombination
from .forward.charge import MAX_BUCKETS, ChargePlan, expected_charge, plan_charge
from .likelihood import LArPixReadout, LikelihoodConfig, hit_list_sizes, hits_to_table
from .likelihood.readout_prob import channel_cost
from .reco.geometry import ProblemGeometry, apply_geometry

#: Published split Student-t fit of muon segment dE/dx (DESIGN.md section 5), MeV/cm.
MIP_PRIOR = {"loc": 1.874, "s_left": 0.1204, "s_right": 0.1058, "nu_left": 4.785, "nu_right": 2.073}


def _log_t_kernel_integral(nu):
    """log of int (1 + u^2/nu)^(-(nu+1)/2) du = log(sqrt(nu pi) Gamma(nu/2) / Gamma((nu+1)/2))."""
    return 0.5 * jnp.log(nu * jnp.pi) + gammaln(nu / 2) - gammaln((nu + 1) / 2)


class SplitStudentT(dist.Distribution):
    r"""Two half Student-t kernels joined continuously at ``loc``.

    .. math:: p(x) \propto (1 + u^2/\nu_\pm)^{-(\nu_\pm+1)/2},\quad u = (x - loc)/s_\pm,

    with (nu_L, s_L) left of loc and (nu_R, s_R) right of it; normaliser
    ``s_L I(nu_L)/2 + s_R I(nu_R)/2`` with I the kernel integral.
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.real,
        "s_left": constraints.positive,
        "s_right": constraints.positive,
        "nu_left": constraints.positive,
        "nu_right": constraints.positive,
    }
    support = constraints.real
    reparametrized_params: ClassVar[list] = ["loc", "s_left", "s_right"]

    def __init__(self, loc, s_left, s_right, nu_left, nu_right, validate_args=None):
        self.loc, self.s_left, self.s_right, self.nu_left, self.nu_right = (
            jnp.asarray(v, jnp.result_type(float))
            for v in (loc, s_left, s_right, nu_left, nu_right)
        )
        batch_shape = jax.lax.broadcast_shapes(
            *(
                jnp.shape(v)
                for v in (self.loc, self.s_left, self.s_right, self.nu_left, self.nu_right)
            )
        )
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def _log_norm(self):
        a = jnp.log(self.s_left) + _log_t_kernel_integral(self.nu_left)
        b = jnp.log(self.s_right) + _log_t_kernel_integral(self.nu_right)
        return jnp.logaddexp(a, b) - jnp.log(2.0)

    def log_prob(self, value):
        left = value < self.loc
        s = jnp.where(left, self.s_left, self.s_right)
        nu = jnp.where(left, self.nu_left, self.nu_right)
        u = (value - self.loc) / s
        return -0.5 * (nu + 1) * jnp.log1p(u * u / nu) - self._log_norm()

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        k1, k2 = jax.random.split(key)
        wl = jnp.log(self.s_left) + _log_t_kernel_integral(self.nu_left)
        wr = jnp.log(self.s_right) + _log_t_kernel_integral(self.nu_right)
        p_left = jnp.exp(wl - jnp.logaddexp(wl, wr))
        left = jax.random.uniform(k1, shape) < p_left
        kl, kr = jax.random.split(k2)
        tl = jnp.abs(jax.random.t(kl, self.nu_left, shape))
        tr = jnp.abs(jax.random.t(kr, self.nu_right, shape))
        return jnp.where(left, self.loc - self.s_left * tl, self.loc + self.s_right * tr)


def _track_index(segments: Segments) -> np.ndarray:
    key = np.stack([segments.event_id, segments.track_id], 1)
    _, track = np.unique(key, axis=0, return_inverse=True)
    return track.ravel()


def latent_segments(
    segments: Segments, latent_length_cm: float, mask: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Map each segment to a latent segment: consecutive pieces of one track of about
    ``latent_length_cm`` (a last piece shorter than half that joins the previous one).

    Returns (latent index per segment, number of latents); segments outside ``mask`` (stopping
    tracks, whose dE/dx follows their residual range) get -1. Segments of a track are taken in
    file order (the generator and larnd-sim write them along the track).
    """
    if latent_length_cm <= 0:
        raise ValueError("latent_length_cm must be positive")
    track = _track_index(segments)
    if mask is not None:
        track = np.where(np.asarray(mask, bool), track, -1)
    out = np.full(segments.n, -1, np.int64)
    dx = segments.dx
    nxt = 0
    for tr in np.unique(track[track >= 0]):
        idx = np.nonzero(track == tr)[0]
        mid = np.cumsum(dx[idx]) - 0.5 * dx[idx]
        total = float(dx[idx].sum())
        n_lat = max(1, int(np.floor(total / latent_length_cm + 0.5)))
        lat = np.minimum((mid / total * n_lat).astype(np.int64), n_lat - 1) if total > 0 else 0
        out[idx] = nxt + lat
        nxt += n_lat
    return out, nxt


#: latent sites besides the calibration parameters (MIP dE/dx, stopping end points, geometry)
LATENT_SITES = ("z_dEdx", "end_shift_cm", "geo_z", "geo_tilt_z", "tpc_drift_offset_cm")

#: rms of the latent end point of a stopping track along the track, cm: range straggling of a
#: 200-500 MeV/c proton (~1.2 % of its 10-50 cm range, PDG "Passage of particles through matter"
#: sec. 34.2.8) and the end-point resolution of 4.4 mm pixels, rounded up
END_SHIFT_SD_CM = 0.5
#: PDG codes whose tracks are treated as stopping (dE/dx from residual range) by default
STOPPING_PDG = (2212,)


class StoppingTracks(NamedTuple):
    """Host-side residual-range geometry of the stopping tracks (per segment, -1/0 elsewhere)."""

    track: np.ndarray  # (N,) index of the segment's stopping track, -1 for other segments
    r_near: np.ndarray  # (N,) residual range of the segment's end nearer the stopping point, cm
    r_far: np.ndarray  # (N,) residual range of its other end, cm
    mass_MeV: tuple[float, ...]  # per stopping track
    n: int


def stopping_tracks(segments: Segments, stopping_pdg: tuple[int, ...] = STOPPING_PDG
                    ) -> StoppingTracks:
    """Residual range of every segment of the tracks whose PDG code is in ``stopping_pdg``.

    The track is taken to stop at the end of its last segment in file order (the generator and
    larnd-sim write segments along the track); the model's latent end point
    (``end_shift_cm``) absorbs the error of that assumption within its prior.
    """
    from .forward.energy_loss import MUON_MASS_MEV, PION_MASS_MEV, PROTON_MASS_MEV

    masses = {2212: PROTON_MASS_MEV, 13: MUON_MASS_MEV, 211: PION_MASS_MEV}
    track = _track_index(segments)
    stop = np.isin(np.abs(segments.pdg_id), stopping_pdg)
    out_track = np.full(segments.n, -1, np.int64)
    r_near = np.zeros(segments.n)
    r_far = np.zeros(segments.n)
    mass = []
    dx = segments.dx
    for tr in np.unique(track[stop]):
        idx = np.nonzero((track == tr) & stop)[0]
        pdg = int(abs(segments.pdg_id[idx[0]]))
        if pdg not in masses:
            raise ValueError(f"stopping track with PDG code {pdg}: no mass known for its "
                             f"residual-range dE/dx (known: {sorted(masses)})")
        after = np.cumsum(dx[idx][::-1])[::-1] - dx[idx]  # track length beyond each segment
        out_track[idx] = len(mass)
        r_near[idx] = after
        r_far[idx] = after + dx[idx]
        mass.append(masses[pdg])
    return StoppingTracks(out_track, r_near, r_far, tuple(mass), len(mass))


def residual_range_energy(r_near, r_far, end_shift_cm, mass_MeV: float, density: float):
    r"""Energy (MeV) a stopping track deposits on a segment between residual ranges
    ``r_near < r_far`` (cm) when its end point moves out by ``end_shift_cm`` = d:

    .. math:: \Delta E = T(R_\mathrm{far} + d) - [R_\mathrm{near} > 0]\, T(R_\mathrm{near} + d),

    T the CSDA kinetic energy at residual range R (clamped at R <= 0,
    :func:`lartpc_bayes.forward.energy_loss.kinetic_energy_from_residual_range`). The last segment
    (R_near = 0) keeps the whole T(R_far + d): for d > 0 the track goes on for d beyond its last
    segment and that stretch's energy T(d) is put on the last segment (moved by at most d, less
    than a pixel at the posterior's mm scale) instead of being dropped. Dropping it, as
    ``T(R_far + d) - T(d)`` did until this round, gave the potential a cusp at d = 0 (T(d) ~ d^0.58
    near the Bragg peak: infinite slope, a 20 um "measurement" of the end point from a Hessian
    taken at the cusp, and NUTS step sizes of 0.03; docs/scale.md)."""
    from .forward.energy_loss import kinetic_energy_from_residual_range

    t_far = kinetic_energy_from_residual_range(r_far + end_shift_cm, mass_MeV, density)
    t_near = kinetic_energy_from_residual_range(r_near + end_shift_cm, mass_MeV, density)
    return t_far - jnp.where(r_near > 0, t_near, 0.0)


def stopping_dEdx(st: StoppingTracks, end_shift_cm, density: float):
    """Segment-averaged dE/dx (MeV/cm) of the stopping segments for end-point shifts (n,) cm:
    :func:`residual_range_energy` over the segment length ``R_far - R_near``."""
    seg = np.nonzero(st.track >= 0)[0]
    tr = st.track[seg]
    d = end_shift_cm[jnp.asarray(tr)]
    out = jnp.zeros(seg.size)
    r_near, r_far = jnp.asarray(st.r_near[seg]), jnp.asarray(st.r_far[seg])
    for m in sorted(set(st.mass_MeV)):
        sel = np.asarray([st.mass_MeV[t] == m for t in tr])
        val = residual_range_energy(r_near, r_far, d, m, density) / (r_far - r_near)
        out = jnp.where(jnp.asarray(sel), val, out)
    return jnp.asarray(seg), out


#: pixels that can never collect more than this fraction of the threshold are not modelled (at
#: 0.1 x 5000 e the comparator fires on such a pixel at most ~5x as often as on an empty one, a
#: few 1e-3 hits per window: no information on the parameters, ~40 % of the channels of a muon)
MIN_CHARGE_FRACTION = 0.1


@dataclass
class CalibrationProblem:
    """Everything the model needs, fixed on the host: card, plan, latent map, observed table."""

    card: DetectorCard
    plan: ChargePlan
    seg_to_latent: np.ndarray
    n_latent: int
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    fixed: dict[str, float] = field(default_factory=dict)
    table: np.ndarray | None = None
    n_outside: int = 0
    prior: dict[str, float] = field(default_factory=lambda: dict(MIP_PRIOR))
    stopping: StoppingTracks | None = None
    #: reconstructed-track geometry (drift from measured time, geometry latents); None: fixed
    geometry: ProblemGeometry | None = None
    #: per bucket, (C, 2) relative sd and relative third cumulant of each channel's charge from the
    #: straggling of the segments feeding it (forward/latent_prior.py); None: no fluctuations
    #: below the latent length
    charge_straggling: tuple[np.ndarray, ...] | None = None
    #: (n_segments, 2) variance and third cumulant of each segment's dE/dx around the value its
    #: latent (or residual range) gives, (MeV/cm)^2 and (MeV/cm)^3: the mean charge of a
    #: fluctuating segment is not the charge of its mean (:func:`straggled_dEdx`); None: no
    #: fluctuations below the latent length
    segment_cumulants: np.ndarray | None = None

    @property
    def free(self) -> tuple[str, ...]:
        return tuple(p for p in PARAM_NAMES if p not in self.fixed)


#: Compilation of one more window bucket in a MAP + Laplace fit (value and gradient, Hessian, E
#: scan): ~13 s on the 2-core CPU of docs/performance.md (200 cm of muons, 3 -> 4 buckets: +26 s
#: at load 3, about half of that on the quiet machine)
COMPILE_S_PER_BUCKET = 13.0
#: Seconds of a compiled MAP + Laplace fit per unit of ``channel_cost`` summed over the channels
#: (200 cm of muons: 90 s for 4.37e8 units, benchmarks/results/fit_memory.json). With
#: COMPILE_S_PER_BUCKET it sets how far build_problem merges window buckets: a bucket more when
#: the fit's run time it saves exceeds its compilation (a 200 cm muon sample keeps 3 of 6,
#: metres of track keep more)
FIT_S_PER_COST = 90.0 / 4.37e8


def build_problem(
    card: DetectorCard,
    segments: Segments,
    hits: Hits | None = None,
    *,
    latent_length_cm: float = 4.0,
    likelihood: LikelihoodConfig | None = None,
    fixed: dict[str, float] | None = None,
    step_cm: float = 0.04,
    min_charge_fraction: float = MIN_CHARGE_FRACTION,
    stopping_pdg: tuple[int, ...] = STOPPING_PDG,
    geometry: ProblemGeometry | None = None,
    latent_prior: str = "derived",
    charge_fluctuations: bool = True,
    generator_config=None,
) -> CalibrationProblem:
    """Plan the charge model for ``segments`` and arrange ``hits`` (if given) into the table.

    Pixels whose largest possible charge anywhere in the prior box is below
    ``min_charge_fraction`` times the discriminator threshold are left out of the plan (they can
    only fire on noise; see :func:`lartpc_bayes.forward.charge.plan_charge`); their hits count at
    the likelihood floor. Tracks whose PDG code is in ``stopping_pdg`` get no dE/dx latents: their
    dE/dx follows their residual range with a latent end point (:func:`stopping_tracks`).

    ``latent_prior="derived"`` gives every latent the split-t of the mean dE/dx over its own length
    (:func:`derived_latent_prior`); ``"published"`` the 0.4 cm-segment fit :data:`MIP_PRIOR`.
    ``charge_fluctuations`` adds the straggling below the latent length to the hit-charge mark
    (:func:`charge_straggling`). ``generator_config`` (forward.generator.GeneratorConfig,
    default: the generator's defaults) states the momentum model both are derived for.
    """
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(PARAM_NAMES)
    if unknown:
        raise KeyError(f"cannot fix unknown parameter(s) {sorted(unknown)}; known: {PARAM_NAMES}")
    cfg = likelihood or LikelihoodConfig()
    plan = plan_charge(card, segments, step_cm=step_cm, max_buckets=MAX_BUCKETS,
                       bucket_cost=partial(channel_cost, el=card.electronics,
                                           n_nodes=cfg.n_nodes, max_lag=cfg.max_lag),
                       bucket_penalty=COMPILE_S_PER_BUCKET / FIT_S_PER_COST,
                       min_charge_e=min_charge_fraction * card.electronics.threshold_e,
                       margin_cm=geometry.margin_cm if geometry is not None else 0.0)
    stopping = stopping_tracks(segments, stopping_pdg)
    s2l, n_lat = latent_segments(segments, latent_length_cm, mask=stopping.track < 0)
    table, n_out = (None, 0)
    likelihood = likelihood or LikelihoodConfig()
    if hits is not None:
        table, n_out = hits_to_table(plan, hits, card.electronics.max_hits_per_pixel)
        if not likelihood.max_hits:
            likelihood = replace(likelihood, max_hits=hit_list_sizes(plan, table))
    problem = CalibrationProblem(card, plan, s2l, n_lat, likelihood, fixed, table, n_out,
                                 stopping=stopping if stopping.n else None, geometry=geometry)
    # --- latent priors per latent length and straggling below it (issue 12) ---
    if latent_prior not in ("derived", "published"):
        raise ValueError(f"latent_prior must be 'derived' or 'published', got {latent_prior!r}")
    if latent_prior == "derived" and n_lat:
        problem.prior = derived_latent_prior(card, segments, s2l, n_lat, generator_config)
    if charge_fluctuations:
        seg = segment_straggling(problem, segments, generator_config)
        w = latent_weights(segments, s2l, n_lat)
        problem.charge_straggling = charge_straggling(problem, segments, generator_config,
                                                      segment=seg, weights=w)
        _, var, k3, _ = seg
        # around the latent's mean m_j = sum w_s X_s: X_s - m_j has variance ~ (1 - w_s) Var_s
        # and third cumulant ~ (1 - w_s)^3 kappa3_s (the other segments' share is O(w^2))
        problem.segment_cumulants = np.stack([var * (1 - w), k3 * (1 - w) ** 3], 1)
    return problem


def latent_lengths(segments: Segments, seg_to_latent: np.ndarray, n_latent: int) -> np.ndarray:
    """(n_latent,) track length of every latent, cm (sum of its segments' dx)."""
    ok = seg_to_latent >= 0
    return np.bincount(seg_to_latent[ok], weights=segments.dx[ok], minlength=n_latent)


def derived_latent_prior(card: DetectorCard, segments: Segments, seg_to_latent: np.ndarray,
                         n_latent: int, generator_config=None) -> dict[str, np.ndarray]:
    """Per-latent split-t parameters (arrays (n_latent,), MeV/cm) of the mean dE/dx over each
    latent's own length, from the package's energy-loss model and the generator's momentum model
    (:func:`lartpc_bayes.forward.latent_prior.latent_prior_params`)."""
    from .forward.latent_prior import latent_prior_params

    lengths = latent_lengths(segments, seg_to_latent, n_latent)
    pr = latent_prior_params(lengths, card.physics.lar_density_g_cm3, config=generator_config)
    return {k: np.asarray(v, np.float64) for k, v in pr.items()}


def segment_straggling(problem: CalibrationProblem, segments: Segments,
                       generator_config=None) -> tuple[np.ndarray, ...]:
    """Per segment: (dE/dx the model gives it at the prior location, MeV/cm; variance and third
    cumulant of its dE/dx, (MeV/cm)^2 and (MeV/cm)^3; stopping flag).

    MIP segments: truncated Landau of their own dx at the beta*gamma of the generator's momentum
    (``GeneratorConfig.muon_momentum_MeV``, 4 GeV/c by default; 4 GeV/c when it draws a spectrum,
    the straggling width depends on it only through the slow rise of the Landau mode). Stopping
    segments: Bohr cumulants at the CSDA energy of their mid residual range."""
    from .forward import energy_loss as el
    from .forward.generator import GeneratorConfig
    from .forward.latent_prior import segment_dedx_cumulants

    card = problem.card
    rho = card.physics.lar_density_g_cm3
    cfg = generator_config or GeneratorConfig()
    p_mu = cfg.muon_momentum_MeV or 4000.0
    n = segments.n
    bg = np.full(n, p_mu / el.MUON_MASS_MEV)
    mass = np.full(n, el.MUON_MASS_MEV)
    dedx = np.full(n, 2.0)
    s2l = problem.seg_to_latent
    if problem.n_latent:
        pr = problem.prior
        loc = np.broadcast_to(np.asarray(pr["loc"], np.float64), (problem.n_latent,))
        ok = s2l >= 0
        dedx[ok] = loc[s2l[ok]]
    stop = np.zeros(n, bool)
    st = problem.stopping
    if st is not None and st.n:
        seg, val = stopping_dEdx(st, jnp.zeros(st.n), rho)
        seg = np.asarray(seg)
        dedx[seg] = np.asarray(val)
        stop[seg] = True
        m = np.asarray(st.mass_MeV)[st.track[seg]]
        t_mid = np.array([el.range_to_kinetic_energy(0.5 * (st.r_near[i] + st.r_far[i]), mm, rho)
                          for i, mm in zip(seg, m, strict=True)])
        bg[seg] = el.beta_gamma_from_kinetic_energy(t_mid, m)
        mass[seg] = m
    var, k3 = np.zeros(n), np.zeros(n)
    for mm in np.unique(mass):
        sel = mass == mm
        var[sel], k3[sel] = segment_dedx_cumulants(
            segments.dx[sel], bg[sel], rho, mass_MeV=float(mm), stopping=stop[sel],
            delta_ray_cut_MeV=cfg.delta_ray_cut_MeV)
    return dedx, var, k3, stop


def charge_straggling(problem: CalibrationProblem, segments: Segments, generator_config=None,
                      *, segment: tuple[np.ndarray, ...] | None = None,
                      weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per bucket, (C, 2): the relative sd and relative third cumulant of every channel's charge
    from the straggling of the segments feeding it, around the latent mean
    (:func:`lartpc_bayes.forward.latent_prior.channel_charge_straggling`), at the card's nominal
    parameters.

    Segment cumulants from :func:`segment_straggling`. Through-going segments' cumulants are
    those of their charge, not of their dE/dx: recombination compresses the Landau tail, so the
    linear propagation is corrected by the exact ratios of
    :func:`lartpc_bayes.forward.latent_prior.charge_cumulant_ratios` (a 0.4 cm MIP segment: sd
    x 0.93, third cumulant x 0.72). Stopping segments (Bohr, relative width of a few %) stay
    linear. ``segment`` and ``weights``: :func:`segment_straggling` and :func:`latent_weights`
    when the caller has them already (computed here otherwise)."""
    from .forward.generator import GeneratorConfig
    from .forward.latent_prior import channel_charge_straggling, charge_cumulant_ratios

    card = problem.card
    cfg = generator_config or GeneratorConfig()
    dedx, var, k3, stop = segment or segment_straggling(problem, segments, generator_config)
    params = DetectorParams(*(jnp.asarray(card.nominal()[p], jnp.float32) for p in PARAM_NAMES))
    mip = ~stop
    if mip.any():
        from .forward import energy_loss as el

        def yield_fn(x):
            return np.asarray(recombination(jnp.asarray(x), params, card.physics)) * x

        p_mu = cfg.muon_momentum_MeV or 4000.0
        r2, r3 = charge_cumulant_ratios(
            segments.dx[mip], p_mu / el.MUON_MASS_MEV, card.physics.lar_density_g_cm3, yield_fn,
            delta_ray_cut_MeV=cfg.delta_ray_cut_MeV)
        var, k3 = var.copy(), k3.copy()
        var[mip] *= r2
        k3[mip] *= r3
    s2l = problem.seg_to_latent
    if weights is None:
        weights = latent_weights(segments, s2l, problem.n_latent)
    return channel_charge_straggling(problem.plan, card, dedx, var, params, k3_dEdx_seg=k3,
                                     seg_to_latent=s2l, latent_weight=weights)


def latent_weights(segments: Segments, seg_to_latent: np.ndarray, n_latent: int) -> np.ndarray:
    """(n_segments,) w_s = dx_s / (length of its latent): the latent is the dx-weighted mean
    ``m_j = sum_{s in j} w_s X_s`` of its segments' dE/dx; 0 for segments without a latent."""
    ok = seg_to_latent >= 0
    L = latent_lengths(segments, seg_to_latent, n_latent)
    w = np.zeros(segments.n)
    w[ok] = segments.dx[ok] / np.maximum(L[seg_to_latent[ok]], 1e-9)
    return w


def latent_scale(prior: dict[str, float]) -> float:
    """Scale s of the non-centred latent: the mean of the two split-t widths, MeV/cm."""
    return 0.5 * (prior["s_left"] + prior["s_right"])


def dEdx_from_z(prior: dict[str, float], z):
    """dE/dx (MeV/cm) of the non-centred latent z: ``loc + s z``."""
    return prior["loc"] + latent_scale(prior) * z


def straggled_dEdx(dEdx_seg: jax.Array, cumulants: jax.Array, params: DetectorParams,
                   physics) -> jax.Array:
    """The dE/dx whose charge is the mean charge of a segment that fluctuates around ``dEdx_seg``.

    A segment's electrons per cm are ``h(X) = R(X) X`` (R the recombination survival at
    ``params``); X fluctuates around its latent's value m with variance ``k2`` and third cumulant
    ``k3`` (``cumulants``, (n, 2): :func:`segment_straggling`). h is concave (R falls with X), so
    ``E[h(X)] < h(m)``: to third order ``E[h(X)] = h(m) + h2(m) k2 / 2 + h3(m) k3 / 6`` (h2, h3
    the second and third derivatives), which is ``h(m + delta)`` with ``delta = (h2 k2 / 2 +
    h3 k3 / 6) / h1(m)``. For a 0.4 cm MIP segment at the Module-0 nominal Birks parameters the
    charge is 0.65 % below that of its mean (Monte Carlo of the truncated Landau: the same to
    0.02 %, tests/test_priors_latent.py); without this the fit reads the deficit as lower A_B and
    k_B (they trade with the latents), a bias that grows with track length. Derivatives of h by
    forward mode (any recombination model of the card)."""
    m = dEdx_seg
    k2, k3 = cumulants[:, 0], cumulants[:, 1]
    ones = jnp.ones_like(m)

    def h(x):
        return recombination(x, params, physics) * x

    def d1(x):
        return jax.jvp(h, (x,), (ones,))[1]

    def d2(x):
        return jax.jvp(d1, (x,), (ones,))[1]

    h2, h3 = jax.jvp(d2, (m,), (ones,))
    return m + (0.5 * h2 * k2 + h3 * k3 / 6.0) / d1(m)


#: jitted forward model (inlined when traced inside a larger jit; compiled once for NumPyro's eager
#: initialisation runs)
_expected_charge = jax.jit(expected_charge, static_argnames=("card", "n_sigma"))


def calibration_model(problem: CalibrationProblem, hits=None):
    """The NumPyro model. ``hits`` is the observed (channels, M, 2) table or None to simulate."""
    card = problem.card
    theta = {}
    for spec in card.params:
        if spec.name in problem.fixed:
            theta[spec.name] = jnp.asarray(problem.fixed[spec.name], jnp.float32)
        else:
            theta[spec.name] = numpyro.sample(spec.name, dist.Uniform(spec.low, spec.high))
    pr = problem.prior
    s = latent_scale(pr)
    n_seg = problem.seg_to_latent.size
    dEdx_seg = jnp.ones(n_seg)  # every segment is a MIP latent's or a stopping track's
    if problem.n_latent:
        with numpyro.plate("latent", problem.n_latent):
            z = numpyro.sample(
                "z_dEdx",
                SplitStudentT(0.0, pr["s_left"] / s, pr["s_right"] / s, pr["nu_left"],
                              pr["nu_right"]),
            )
        # jnp: z is a numpy array when substituted with a numpy init value
        dEdx = numpyro.deterministic("dEdx", jnp.asarray(dEdx_from_z(pr, z)))
        dEdx_seg = dEdx[np.maximum(problem.seg_to_latent, 0)]
    st = problem.stopping
    if st is not None and st.n:
        with numpyro.plate("stopping", st.n):
            shift = numpyro.sample("end_shift_cm", dist.Normal(0.0, END_SHIFT_SD_CM))
        seg, val = stopping_dEdx(st, shift, card.physics.lar_density_g_cm3)
        dEdx_seg = dEdx_seg.at[seg].set(val)
    dEdx_seg = jnp.maximum(dEdx_seg, 1e-3)
    params = DetectorParams(*(theta[p] for p in PARAM_NAMES))
    if problem.segment_cumulants is not None:
        dEdx_seg = straggled_dEdx(dEdx_seg, jnp.asarray(problem.segment_cumulants, jnp.float32),
                                  params, card.physics)
    device = problem.plan.device
    if problem.geometry is not None:  # reconstructed tracks / drift offsets (reco/geometry.py)
        device = _geometry_device(problem, device, theta["E"])
    charges = _expected_charge(device, dEdx_seg, params, card)
    numpyro.sample(
        "hits",
        LArPixReadout(
            charges, problem.plan.buckets, card.electronics, problem.likelihood, problem.n_outside,
            charge_straggling=problem.charge_straggling,
        ),
        obs=hits,
    )


def _geometry_device(problem: CalibrationProblem, device, E):
    """Geometry sites (reco/geometry.py): per-track offsets ``geo_z`` ~ N(0, I_3) scaled by the
    track fit's Cholesky factor (deterministic ``geo_shift_cm``, (T, 3) in (u, v, d) cm), and the
    per-TPC drift offset ``tpc_drift_offset_cm`` ~ N(0, sd_card); per-track direction changes
    ``geo_tilt_z`` ~ N(0, I_2) mapped by the perpendicular basis and the direction prior's
    Cholesky factor (deterministic ``geo_tilt``, (T, 3) rad); drift from measured time."""
    g = problem.geometry
    shift = tpc = tilt = None
    if g.n_tracks:
        z = numpyro.sample("geo_z", dist.Normal(jnp.zeros((g.n_tracks, 3)), 1.0).to_event(2))
        shift = numpyro.deterministic("geo_shift_cm", jnp.einsum("tij,tj->ti", jnp.asarray(
            g.chol, z.dtype), z))
    if g.has_tilt:
        w = numpyro.sample("geo_tilt_z", dist.Normal(jnp.zeros((g.n_tracks, 2)), 1.0).to_event(2))
        tilt = numpyro.deterministic("geo_tilt", jnp.einsum(
            "tij,tj->ti", jnp.asarray(g.tilt_map, w.dtype), w))
    if g.tpc_offset_sd > 0:
        with numpyro.plate("tpc", g.n_tpc):
            tpc = numpyro.sample("tpc_drift_offset_cm", dist.Normal(0.0, g.tpc_offset_sd))
    return apply_geometry(device, g, E, problem.card.physics.temperature_K, shift, tpc, tilt)


def build_reco_problem(card: DetectorCard, res, hits, *, geometry_latents: bool = True,
                       tpc_offset: bool = False, cfg=None, **kwargs):
    """:func:`build_problem` for reconstructed segments (``res``: a
    :class:`lartpc_bayes.reco.RecoResult`): drift recomputed from
    the measured drift time with the sampled E, plus the geometry latents when asked."""
    from .reco.geometry import reco_geometry
    from .reco.tracks import RecoConfig

    cfg = cfg or RecoConfig()
    if res.segments.n == 0:
        raise ValueError("no reconstructed segment passes the selection: nothing to calibrate")
    geom = reco_geometry(card, res.reco, track_latents=geometry_latents, tpc_offset=tpc_offset,
                         sys_transverse_cm=cfg.sys_transverse_cm, sys_drift_cm=cfg.sys_drift_cm)
    return build_problem(card, res.segments, hits, geometry=geom, **kwargs)
