r"""SIREN surrogate of the photon library: a continuous, differentiable visibility V_c(x).

Network (Sitzmann et al., "Implicit Neural Representations with Periodic Activation Functions",
NeurIPS 2020, arXiv:2006.09661): ``h_1 = sin(w0 (W_1 u + b_1))``, ``h_{k+1} = sin(w0 (W_k h_k +
b_k))``, output ``o = W_L h_L + b_L`` (linear), with the published initialisation: first layer
``W ~ U(-1/n_in, 1/n_in)``, hidden layers ``W ~ U(-sqrt(6/n)/w0, sqrt(6/n)/w0)``, w0 = 30, biases
``U(-1/sqrt(n), 1/sqrt(n))``. The input u in [-1, 1]^3 is the position scaled to the module box.

Output map. The visibility spans four decades (1e-3 next to a tile, 1e-7 across the TPC) and is
exactly 0 for the channels of the other TPC. The net predicts ``log V`` of every channel, the
structural zero is imposed by the TPC mask, and the nominal library's mean log visibility per
channel is added as a fixed offset (the net learns the residual):
``V_c(x) = m_c(x) exp(o_c(x) + mu_c)``.

Loss on the library (talk 001: "weighted L2 of voxel visibilities"). With N photons emitted in a
voxel the Poisson deviance of the pe count is, to second order in the log error,
``N V (log V_hat - log V)^2 / 2``: the Fisher-optimal L2 is on log V with weight proportional to
V. Plain L2 on V would fit the 1e-3 voxels and ignore the 1e-6 ones (their error would be
100 %); unweighted L2 on log V would spend the capacity on the dark voxels that carry no
photons. We use ``w = V / mean(V) + floor`` (floor 0.05) on log V, which is the Poisson weight
plus a small uniform term that keeps the dark voxels from drifting off by orders of magnitude.

Loss on muon data (talk 001, "PoissonNLLLoss for the total photoelectrons"): per event e and
channel c, ``mu_ec = g sum_p N_p V_c(x_p) + b``, ``-log L = sum_ec mu_ec - n_ec log mu_ec``; no
library is needed (:func:`train_on_events`).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .card import LightCard
from .library import PhotonLibrary, nearest_tpc

#: Sitzmann et al. 2020 frequency factor of the first layer (and, with their init, every layer)
W0 = 30.0
#: uniform weight floor of the library loss (see module docstring)
WEIGHT_FLOOR = 0.05
#: visibilities below this are treated as 0 in the log target (pe per photon)
VIS_FLOOR = 1e-12


class SineLayer(eqx.Module):
    """``sin(w0 (W x + b))`` with the SIREN initialisation."""

    weight: jax.Array
    bias: jax.Array
    w0: float = eqx.field(static=True)

    def __init__(self, n_in: int, n_out: int, w0: float, first: bool, *, key: jax.Array):
        kw, kb = jax.random.split(key)
        bound = 1.0 / n_in if first else np.sqrt(6.0 / n_in) / w0
        self.weight = jax.random.uniform(kw, (n_out, n_in), minval=-bound, maxval=bound)
        bb = 1.0 / np.sqrt(n_in)
        self.bias = jax.random.uniform(kb, (n_out,), minval=-bb, maxval=bb)
        self.w0 = float(w0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.sin(self.w0 * (self.weight @ x + self.bias))


class Siren(eqx.Module):
    """SIREN from a position (3,) in cm to log visibility of every channel (before the mask).

    ``lo``/``hi`` scale positions to [-1, 1]^3; ``offset`` is the fixed per-channel log offset.
    """

    layers: tuple[SineLayer, ...]
    out_w: jax.Array
    out_b: jax.Array
    lo: jax.Array
    hi: jax.Array
    offset: jax.Array

    def __init__(self, n_out: int, lo, hi, *, width: int = 64, depth: int = 3, w0: float = W0,
                 offset=None, key: jax.Array):
        keys = jax.random.split(key, depth + 1)
        layers = [SineLayer(3, width, w0, True, key=keys[0])]
        for k in range(1, depth):
            layers.append(SineLayer(width, width, w0, False, key=keys[k]))
        self.layers = tuple(layers)
        bound = np.sqrt(6.0 / width) / w0
        self.out_w = jax.random.uniform(keys[-1], (n_out, width), minval=-bound, maxval=bound)
        self.out_b = jnp.zeros((n_out,))
        self.lo = jnp.asarray(lo, jnp.float32)
        self.hi = jnp.asarray(hi, jnp.float32)
        self.offset = jnp.zeros((n_out,)) if offset is None else jnp.asarray(offset, jnp.float32)

    def __call__(self, xyz: jax.Array) -> jax.Array:
        u = 2.0 * (xyz - self.lo) / (self.hi - self.lo) - 1.0
        h = u
        for layer in self.layers:
            h = layer(h)
        return self.out_w @ h + self.out_b + self.offset


def n_params(model: Siren) -> int:
    """Number of trainable parameters (weights and biases; not the fixed scaling/offset)."""
    arrays = [model.out_w, model.out_b] + [a for lay in model.layers for a in (lay.weight,
                                                                              lay.bias)]
    return int(sum(a.size for a in arrays))


def _trainable(model: Siren):
    """Filter spec: everything but lo/hi/offset."""
    spec = jax.tree_util.tree_map(lambda _: True, model)
    return eqx.tree_at(lambda m: (m.lo, m.hi, m.offset), spec, replace=(False, False, False))


def channel_mask(card: LightCard, xyz: np.ndarray) -> np.ndarray:
    """(P, n_ch) 1 where the channel looks into the point's (nearest) TPC, else 0."""
    return (nearest_tpc(card, xyz)[:, None] == card.tile_tpc[None, :]).astype(np.float32)


def predict(model: Siren, xyz: jax.Array, mask: jax.Array) -> jax.Array:
    """Visibility (P, n_ch) = mask * exp(net(x)) (pe per photon)."""
    return mask * jnp.exp(jax.vmap(model)(xyz))


class LibraryData(NamedTuple):
    """Flattened library: voxel centres, masks, visibilities (host arrays)."""

    xyz: np.ndarray  # (V, 3)
    mask: np.ndarray  # (V, C)
    vis: np.ndarray  # (V, C)


def library_data(card: LightCard, lib: PhotonLibrary) -> LibraryData:
    xyz, _ = lib.centres()
    xyz = xyz.reshape(-1, 3)
    vis = lib.vis.reshape(-1, lib.n_channels).astype(np.float64)
    return LibraryData(xyz, channel_mask(card, xyz), vis)


def split_voxels(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, held-out) voxel indices."""
    perm = np.random.default_rng(seed).permutation(n)
    k = round(holdout * n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def log_offset(data: LibraryData) -> np.ndarray:
    """Per-channel mean of log V over the voxels the channel sees."""
    lv = np.log(np.maximum(data.vis, VIS_FLOOR))
    m = data.mask > 0
    return np.array([lv[m[:, c], c].mean() for c in range(data.vis.shape[1])], np.float32)


def library_loss(model: Siren, xyz, mask, vis, weight_floor: float = WEIGHT_FLOOR):
    """Visibility-weighted L2 on log V (module docstring), masked to the visible channels."""
    logv = jax.vmap(model)(xyz)
    target = jnp.log(jnp.maximum(vis, VIS_FLOOR))
    vbar = jnp.sum(vis * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    w = mask * (vis / vbar + weight_floor)
    return jnp.sum(w * (logv - target) ** 2) / jnp.sum(w)


def train_on_library(card: LightCard, lib: PhotonLibrary, *, width: int = 64, depth: int = 3,
                     w0: float = W0, steps: int = 2000, batch: int = 4096, lr: float = 1e-3,
                     holdout: float = 0.1, seed: int = 0, model: Siren | None = None
                     ) -> tuple[Siren, dict]:
    """Fit a SIREN to the library (Adam with cosine-decayed learning rate, minibatches of voxels;
    a random ``holdout`` fraction of voxels is never trained on). Returns (model, info) with the
    held-out error of :func:`relative_error`."""
    data = library_data(card, lib)
    tr, ho = split_voxels(data.xyz.shape[0], holdout, seed)
    lo, hi = card.bounds
    if model is None:
        model = Siren(card.n_channels, lo, hi, width=width, depth=depth, w0=w0,
                      offset=log_offset(data), key=jax.random.key(seed))
    spec = _trainable(model)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
    params, static = eqx.partition(model, spec)
    state = opt.init(params)
    X = jnp.asarray(data.xyz[tr], jnp.float32)
    M = jnp.asarray(data.mask[tr], jnp.float32)
    Vv = jnp.asarray(data.vis[tr], jnp.float32)

    @jax.jit
    def step(params, state, key):
        idx = jax.random.randint(key, (min(batch, X.shape[0]),), 0, X.shape[0])

        def loss(p):
            return library_loss(eqx.combine(p, static), X[idx], M[idx], Vv[idx])

        val, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, val

    key = jax.random.key(seed + 1)
    t0 = time.perf_counter()
    losses = []
    for _i in range(steps):
        key, k = jax.random.split(key)
        params, state, val = step(params, state, k)
        losses.append(val)
    model = eqx.combine(params, static)
    info = {"train_s": time.perf_counter() - t0, "loss": np.asarray(jnp.stack(losses)),
            "n_params": n_params(model), "n_voxels": lib.n_voxels,
            "n_entries": int(data.mask.sum()), "heldout": ho, "train": tr}
    info.update({f"heldout_{k}": v for k, v in
                 relative_error(model, data.xyz[ho], data.mask[ho], data.vis[ho]).items()})
    return model, info


def weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """Quantile q of x with weights w (step CDF, midpoint convention)."""
    order = np.argsort(x)
    x, w = x[order], w[order]
    c = np.cumsum(w) - 0.5 * w
    return float(np.interp(q * w.sum(), c, x))


def relative_error(model: Siren, xyz: np.ndarray, mask: np.ndarray, vis: np.ndarray,
                   chunk: int = 16384) -> dict[str, float]:
    """|V_hat / V - 1| over the visible (voxel, channel) entries: visibility-weighted median and
    95th percentile (the photon-weighted error), and the unweighted ones."""
    pred = np.concatenate([
        np.asarray(predict(model, jnp.asarray(xyz[s:s + chunk], jnp.float32),
                           jnp.asarray(mask[s:s + chunk])))
        for s in range(0, xyz.shape[0], chunk)
    ])
    return compare(pred, vis, mask)


def compare(pred: np.ndarray, vis: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Relative-error summary of ``pred`` against ``vis`` on the entries where mask > 0."""
    m = (mask > 0) & (vis > VIS_FLOOR)
    r = np.abs(pred[m] / vis[m] - 1.0)
    w = vis[m]
    return {"median_w": weighted_quantile(r, w, 0.5), "p95_w": weighted_quantile(r, w, 0.95),
            "median": float(np.median(r)), "p95": float(np.quantile(r, 0.95)),
            "bias_w": float(np.sum(w * (pred[m] / vis[m] - 1.0)) / w.sum())}


class MuonLight(NamedTuple):
    """Light-training events: points along tracks with their photon counts, padded per event.

    xyz  : (E, P, 3) cm
    n_ph : (E, P) photons emitted at each point (0 on padding)
    mask : (E, P, C) channel mask of each point's TPC
    pe   : (E, C) observed photo-electrons
    """

    xyz: np.ndarray
    n_ph: np.ndarray
    mask: np.ndarray
    pe: np.ndarray


def muon_points(card: LightCard, n_events: int, seed: int, *, step_cm: float = 1.0,
                photons_per_cm: float = 4.57e4, max_points: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Straight cosmic-like tracks through the module: a uniform point in the module box and an
    isotropic direction (cos-squared zenith around the vertical axis y, as cosmics), clipped to the
    TPC that contains the point and chopped into ``step_cm`` pieces. ``photons_per_cm`` defaults
    to a MIP: 2.1 MeV/cm x (1/19.5 eV - R/23.6 eV) = 4.57e4 photons/cm at
    R_Birks(2.1 MeV/cm) = 0.697.

    Returns (xyz (E, P, 3), n_ph (E, P)) padded with zero photons.
    """
    rng = np.random.default_rng(seed)
    pts, nph = [], []
    for _ in range(n_events):
        t = card.tpcs[rng.integers(len(card.tpcs))]
        lo, hi = np.array(t.lo), np.array(t.hi)
        p0 = rng.uniform(lo, hi)
        cz = np.sqrt(rng.uniform())  # cos(zenith) ~ cos^2 intensity on a horizontal plane
        phi = rng.uniform(0, 2 * np.pi)
        sz = np.sqrt(1 - cz * cz)
        d = np.array([sz * np.cos(phi), -cz, sz * np.sin(phi)])
        # clip the infinite line to the box
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = np.where(d != 0, (lo - p0) / d, -np.inf)
            t2 = np.where(d != 0, (hi - p0) / d, np.inf)
        tmin = np.max(np.minimum(t1, t2))
        tmax = np.min(np.maximum(t1, t2))
        n = max(1, int(np.ceil((tmax - tmin) / step_cm)))
        s = tmin + (np.arange(n) + 0.5) * (tmax - tmin) / n
        pts.append(p0 + s[:, None] * d)
        nph.append(np.full(n, photons_per_cm * (tmax - tmin) / n))
    P = max_points or max(len(p) for p in pts)
    xyz = np.zeros((n_events, P, 3))
    n_ph = np.zeros((n_events, P))
    for e, (p, w) in enumerate(zip(pts, nph, strict=True)):
        k = min(P, len(p))
        xyz[e, :k] = p[:k]
        xyz[e, k:] = p[0]
        n_ph[e, :k] = w[:k]
    return xyz, n_ph


def simulate_muon_light(card: LightCard, n_events: int, seed: int, *,
                        attenuation_cm: float | None = None, step_cm: float = 1.0,
                        gain: float = 1.0) -> MuonLight:
    """Muon events with Poisson photo-electrons from the *geometric* visibility (the truth), at
    the card's attenuation length or ``attenuation_cm``; dark counts ``card.dark_pe`` added."""
    from .library import visibility

    xyz, n_ph = muon_points(card, n_events, seed, step_cm=step_cm)
    E, P, _ = xyz.shape
    V = visibility(card, xyz.reshape(-1, 3), attenuation_cm=attenuation_cm).reshape(E, P, -1)
    mu = gain * np.einsum("ep,epc->ec", n_ph, V) + card.dark_pe
    pe = np.random.default_rng(seed + 7).poisson(mu).astype(np.float64)
    mask = channel_mask(card, xyz.reshape(-1, 3)).reshape(E, P, -1)
    return MuonLight(xyz, n_ph, mask, pe)


def event_nll(model: Siren, xyz, n_ph, mask, pe, dark_pe: float, gain: float = 1.0):
    """Poisson NLL (up to the constant log n!) of the pe counts of a batch of events, per event
    and channel: ``mu - n log mu``, mu = gain sum_p N_p V(x_p) + dark."""
    E, P, _ = xyz.shape
    V = predict(model, xyz.reshape(E * P, 3), mask.reshape(E * P, -1)).reshape(E, P, -1)
    mu = gain * jnp.einsum("ep,epc->ec", n_ph, V) + dark_pe
    return jnp.mean(mu - pe * jnp.log(mu))


def train_on_events(card: LightCard, events: MuonLight, model: Siren, *, steps: int = 1500,
                    batch: int = 64, lr: float = 2e-4, seed: int = 0) -> tuple[Siren, dict]:
    """Fine-tune (or train from a fresh init) a SIREN on muon events with the Poisson likelihood
    of the pe per channel (talk 001): no library is used."""
    spec = _trainable(model)
    params, static = eqx.partition(model, spec)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    state = opt.init(params)
    X = jnp.asarray(events.xyz, jnp.float32)
    N = jnp.asarray(events.n_ph, jnp.float32)
    M = jnp.asarray(events.mask, jnp.float32)
    Y = jnp.asarray(events.pe, jnp.float32)
    dark = float(card.dark_pe)

    @jax.jit
    def step(params, state, key):
        idx = jax.random.randint(key, (min(batch, X.shape[0]),), 0, X.shape[0])

        def loss(p):
            return event_nll(eqx.combine(p, static), X[idx], N[idx], M[idx], Y[idx], dark)

        val, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, val

    key = jax.random.key(seed + 3)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        key, k = jax.random.split(key)
        params, state, val = step(params, state, k)
        losses.append(val)
    model = eqx.combine(params, static)
    return model, {"train_s": time.perf_counter() - t0, "loss": np.asarray(jnp.stack(losses))}
