r"""Events as the unit of scale: the potential as a sum over events, vmapped in shape buckets and
sharded over devices.

Given theta, events are conditionally independent and their latents (the dE/dx latents ``z`` of
their MIP tracks, the end-point shifts ``d`` of their stopping tracks) are local, so

.. math:: U(\theta_u, \{l_e\}) = U_0(\theta_u) + \sum_e U_e(\theta_u, l_e),\qquad
          U_0 = -\sum_p [\log\sigma(u_p) + \log\sigma(-u_p)],

    U_e = -\log L_e(\theta, \mathrm{dE/dx}(l_e)) - \sum_l \log \mathrm{SplitT}(z_{e,l})
          - \sum_t \log N(d_{e,t}; 0, 0.5\,\mathrm{cm})

in NumPyro's unconstrained space (theta_p = lo + (hi - lo) sigmoid(u_p): U_0 is the uniform prior
with its log-Jacobian, the same value as ``potential_energy`` of
:func:`lartpc_bayes.model.calibration_model`; ``tests/test_events.py`` checks it against the
combined problem). ``L_e`` is the PPP likelihood of the event's own hit table
(:func:`lartpc_bayes.likelihood.log_likelihood`).

Groups. Events are assigned to G groups of similar track length (longest first, each to the
lightest group with room for its latents; G the fewest multiple of the device count with at most
``MAX_GROUP_LATENTS`` local latents per group), and each group is planned as one problem
(:func:`lartpc_bayes.model.build_problem` on its events' segments and hits: channels are
(event, pixel), so the group's potential is the sum of its events' potentials, with the window
classes chosen for the group's channels together). The groups are padded to one shape (sub-points
with zero length, pairs with an exactly zero pad fraction on a masked channel, empty window classes
as all-masked buckets, latents with a mask), so one compiled function serves them and ``vmap``
runs them together. Padded latents carry a unit Gaussian term ``z^2/2`` (zero at the optimum,
keeps each block positive definite and decoupled from theta: no effect on theta's marginal).
Groups added to make G divisible by the device count have weight 0.

Why groups and not one event per row (the layout of stop 20): events differ tenfold in size (a
2 cm stopping proton beside a 25 cm muon) and each plans its own window classes, so padding every
event to the largest one multiplied the work: on 106 cm (4 muons, 7 protons, 11 events in one
bucket) one value and gradient cost 1.78 s and the per-event Hessian 6.6 GB, against 0.18 s and
1.2 GB for the same hits planned as one problem (the padded pairs were 10x the real ones). A group
is planned like that one problem; only the device count and the latent cap split the run.

Sharding. The group axis of every bucket is laid out over a 1-D ``jax.sharding.Mesh`` named
``"events"`` (``NamedSharding(mesh, P("events"))``); theta is replicated. ``jit`` then evaluates
each device's groups locally and all-reduces the sum: the same code on one CPU, on
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and on many GPUs.

Multi-host recipe (same code): start one process per host with
``jax.distributed.initialize(coordinator_address="host0:1234", num_processes=H, process_id=i)``
before any other JAX call; ``jax.devices()`` then lists every device of every host and
:func:`event_mesh` spans them all. Each process builds the same :class:`EventBatch` (cheap host
work: planning) or reads its share, and ``jax.make_array_from_process_local_data`` assembles the
global arrays; ``jit`` of :meth:`EventBatch.potential` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..data import Hits, Segments
from ..detector import PARAM_NAMES, DetectorCard
from ..detector.physics import DetectorParams
from ..forward.charge import Bucket, SubPoints, expected_charge
from ..likelihood import LikelihoodConfig, hit_list_sizes, log_likelihood
from ..model import (
    END_SHIFT_SD_CM,
    MIP_PRIOR,
    STOPPING_PDG,
    CalibrationProblem,
    SplitStudentT,
    build_problem,
    latent_scale,
    latent_segments,
    residual_range_energy,
    stopping_tracks,
    straggled_dEdx,
)

__all__ = ["EventBatch", "EventBucket", "build_event_batch", "event_mesh", "split_events"]

#: split-t parameters of a latent's prior (model.MIP_PRIOR keys), in EventData.prior order
_PRIOR_KEYS = ("loc", "s_left", "s_right", "nu_left", "nu_right")
#: pad edges of padding pairs, cm: an exactly zero pad fraction (as in forward/charge.py)
_FAR_CM = 1e3
#: local latents per group at most (build_event_batch): the latent blocks of the block Laplace
#: are (G, n_l, n_l), i.e. memory n_l x (total latents) -- linear in the run, never its square;
#: 256 keeps one 10 m run (~200 latents) one group and each block's eigendecomposition trivial
MAX_GROUP_LATENTS = 256


def event_mesh(devices: list | None = None) -> Mesh:
    """1-D device mesh with axis ``"events"`` over ``devices`` (default: every device)."""
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, ("events",))


class EventData(NamedTuple):
    """Device arrays of one shape bucket, leading axis = events (E)."""

    sub: SubPoints  # (E, S)
    buckets: tuple[Bucket, ...]  # per window class, (E, P) / (E, C) / ticks (E, W)
    seg_latent: jax.Array  # (E, N) int32 latent of each segment (0 where none)
    seg_stop: jax.Array  # (E, N) int32 stopping track of each segment, -1 where none
    r_near: jax.Array  # (E, N) cm
    r_far: jax.Array  # (E, N) cm
    lat_mask: jax.Array  # (E, L) 1 real latent, 0 padding
    stop_mask: jax.Array  # (E, T)
    n_outside: jax.Array  # (E,) hits outside the event's channels
    weight: jax.Array  # (E,) 1 real event, 0 padding event
    prior: tuple[jax.Array, ...]  # (E, L) each: split-t loc, s_left, s_right, nu_left, nu_right
    straggling: tuple[jax.Array, ...] | None  # per window class (E, C, 2) charge straggling
    seg_cumulants: jax.Array | None = None  # (E, N, 2) segment dE/dx cumulants (straggled_dEdx)


@dataclass
class EventBucket:
    """Groups of events padded to one shape: their data, hit tables and latent layout.

    A row is a group (several events planned as one problem, :func:`build_event_batch`); its
    local vector is [z latents (L, padded), stopping shifts (T, padded)]."""

    data: EventData
    table: jax.Array  # (G, C_total, M, 2) int32
    config: LikelihoodConfig  # static: per-window-class compacted hit-list sizes
    events: np.ndarray  # (G,) group number, -1 for padding groups (weight 0)
    n_latent: int  # L (padded)
    n_stop: int  # T (padded)
    lat_index: np.ndarray  # (G, L) index into the combined z_dEdx vector, -1 for padding
    stop_index: np.ndarray  # (G, T) index into the combined end_shift_cm vector, -1 padding
    local_event: np.ndarray  # (G, L + T) event id of each local latent, -1 for padding
    local_colour: np.ndarray  # (G, L + T) its rank within its event (Hessian colour), -1 pad
    group_events: tuple[tuple[int, ...], ...] = ()  # event ids of each real group

    @property
    def n_events(self) -> int:
        """Rows (groups, padding included)."""
        return int(self.events.size)

    @property
    def n_local(self) -> int:
        """Local latents per group: L + T."""
        return self.n_latent + self.n_stop

    @property
    def n_colours(self) -> int:
        """Hessian-vector products that give every group's latent block (largest event's local
        count): latents of different events never share a term of the potential."""
        return int(self.local_colour.max()) + 1 if self.local_colour.size else 0


def split_events(segments: Segments, hits: Hits | None) -> list[tuple[int, Segments, Hits | None]]:
    """(event id, its segments, its hits) for every event id of ``segments``, sorted by id."""
    return [(int(ev), segments.select(segments.event_id == ev),
             None if hits is None else _select_hits(hits, hits.event_id == ev))
            for ev in np.unique(segments.event_id)]


def _select_hits(hits: Hits, mask: np.ndarray) -> Hits:
    """The hits where ``mask`` is true."""
    return Hits(hits.event_id[mask], hits.pixel_id[mask], hits.tick[mask], hits.adc[mask])


def _pad(a: np.ndarray, n: int, value: Any = 0) -> np.ndarray:
    a = np.asarray(a)
    if a.shape[0] > n:
        raise ValueError(f"internal: cannot pad {a.shape[0]} rows to {n}")
    return np.concatenate([a, np.full((n - a.shape[0], *a.shape[1:]), value, a.dtype)])


def _event_arrays(pb: CalibrationProblem, mass: float | None):
    """Host copies of one event problem's plan, split by window class."""
    plan = pb.plan
    sub = {k: np.asarray(getattr(plan.sub, k)) for k in SubPoints._fields}
    by_w, start = {}, 0
    table = np.asarray(pb.table)
    for b in plan.buckets:
        C = b.n_channels
        by_w[b.window] = ({k: np.asarray(getattr(b, k)) for k in Bucket._fields},
                          table[start:start + C])
        start += C
    rel = getattr(pb, "charge_straggling", None)
    for j, b in enumerate(plan.buckets):
        by_w[b.window] += (None if rel is None else np.asarray(rel[j], np.float64),)
    prior = {k: np.broadcast_to(np.asarray(pb.prior[k], np.float64), (pb.n_latent,))
             for k in _PRIOR_KEYS}
    st = pb.stopping
    n = pb.seg_to_latent.size
    seg_stop = st.track if st is not None else np.full(n, -1)
    if st is not None and any(m != mass for m in st.mass_MeV):
        raise ValueError("the event-batched potential supports stopping tracks of one mass "
                         f"({mass} MeV); found {sorted(set(st.mass_MeV))}")
    cum = getattr(pb, "segment_cumulants", None)
    return dict(sub=sub, by_w=by_w, prior=prior, seg_latent=np.maximum(pb.seg_to_latent, 0),
                seg_cum=None if cum is None else np.asarray(cum, np.float64),
                seg_stop=seg_stop, r_near=st.r_near if st is not None else np.zeros(n),
                r_far=st.r_far if st is not None else np.ones(n), n_latent=pb.n_latent,
                n_stop=st.n if st is not None else 0, n_outside=pb.n_outside,
                max_hits=dict(zip([b.window for b in plan.buckets], pb.likelihood.max_hits,
                                  strict=True)))


def _stack_bucket(arrs: list[dict], weights: list[float], M: int, base: LikelihoodConfig,
                  dtype) -> tuple[EventData, jax.Array, LikelihoodConfig, int, int]:
    """Pad the events ``arrs`` to their common shape and stack them."""
    S = max(a["sub"]["seg"].size for a in arrs)
    N = max(a["seg_latent"].size for a in arrs)
    L = max(1, max(a["n_latent"] for a in arrs))
    T = max(a["n_stop"] for a in arrs)
    windows = sorted({w for a in arrs for w in a["by_w"]})
    C = {w: max(a["by_w"][w][0]["chan_mask"].size for a in arrs if w in a["by_w"])
         for w in windows}
    Pn = {w: max(a["by_w"][w][0]["pair_sub"].size for a in arrs if w in a["by_w"])
          for w in windows}
    subs = {k: [] for k in SubPoints._fields}
    bks = {w: {k: [] for k in Bucket._fields} for w in windows}
    tables, fields = [], {k: [] for k in ("seg_latent", "seg_stop", "r_near", "r_far")}
    lat_mask, stop_mask, n_out = [], [], []
    priors = {k: [] for k in _PRIOR_KEYS}
    has_rel = any(a["by_w"][w][2] is not None for a in arrs for w in a["by_w"])
    has_cum = any(a["seg_cum"] is not None for a in arrs)
    cums = [_pad(a["seg_cum"] if a["seg_cum"] is not None else np.zeros((a["seg_latent"].size, 2)),
                 N, 0.0) for a in arrs]
    rels = {w: [] for w in windows}
    for a in arrs:
        for k in SubPoints._fields:
            subs[k].append(_pad(a["sub"][k], S))
        rows = []
        for w in windows:
            if w in a["by_w"]:
                b, tb, rel = a["by_w"][w]
            else:  # an empty bucket of this window class: one masked channel, one dead pair
                b = {"pair_sub": np.zeros(1, np.int32), "pair_chan": np.zeros(1, np.int32),
                     "pair_u": np.full((1, 2), _FAR_CM), "pair_v": np.full((1, 2), _FAR_CM),
                     "ticks": np.arange(w, dtype=np.int32), "chan_mask": np.zeros(1)}
                tb = np.full((1, M, 2), -1, np.int32)
                rel = None
            rels[w].append(_pad(rel if rel is not None else np.zeros((b["chan_mask"].size, 2)),
                                C[w], 0.0))
            bks[w]["pair_sub"].append(_pad(b["pair_sub"], Pn[w], 0))
            bks[w]["pair_chan"].append(_pad(b["pair_chan"], Pn[w], C[w] - 1))
            bks[w]["pair_u"].append(_pad(b["pair_u"], Pn[w], _FAR_CM))
            bks[w]["pair_v"].append(_pad(b["pair_v"], Pn[w], _FAR_CM))
            bks[w]["ticks"].append(b["ticks"])
            bks[w]["chan_mask"].append(_pad(b["chan_mask"], C[w], 0))
            rows.append(_pad(tb, C[w], -1))
        tables.append(np.concatenate(rows, 0))
        fields["seg_latent"].append(_pad(a["seg_latent"], N, 0))
        fields["seg_stop"].append(_pad(a["seg_stop"], N, -1))
        fields["r_near"].append(_pad(a["r_near"], N, 0.0))
        fields["r_far"].append(_pad(a["r_far"], N, 1.0))
        lat_mask.append(_pad(np.ones(a["n_latent"]), L, 0.0))
        stop_mask.append(_pad(np.ones(a["n_stop"]), T, 0.0))
        n_out.append(a["n_outside"])
        for k in _PRIOR_KEYS:
            priors[k].append(_pad(a["prior"][k], L, MIP_PRIOR[k]))
    f = lambda x, dt=dtype: jnp.asarray(np.stack(x), dt)  # noqa: E731
    i = lambda x: jnp.asarray(np.stack(x), jnp.int32)  # noqa: E731
    sub = SubPoints(seg=i(subs["seg"]), dl=f(subs["dl"]), drift=f(subs["drift"]),
                    t0=f(subs["t0"]), inside=f(subs["inside"]))
    buckets = tuple(Bucket(pair_sub=i(bks[w]["pair_sub"]), pair_chan=i(bks[w]["pair_chan"]),
                           pair_u=f(bks[w]["pair_u"]), pair_v=f(bks[w]["pair_v"]),
                           ticks=i(bks[w]["ticks"]), chan_mask=f(bks[w]["chan_mask"]))
                    for w in windows)
    max_hits = tuple(min(C[w] * M, max(a["max_hits"].get(w, 16) for a in arrs)) for w in windows)
    data = EventData(sub, buckets, i(fields["seg_latent"]), i(fields["seg_stop"]),
                     f(fields["r_near"]), f(fields["r_far"]), f(lat_mask), f(stop_mask),
                     f(n_out), jnp.asarray(weights, dtype),
                     tuple(f(priors[k]) for k in _PRIOR_KEYS),
                     tuple(f(rels[w]) for w in windows) if has_rel else None,
                     f(cums) if has_cum else None)
    table = jnp.asarray(np.stack(tables), jnp.int32)
    return data, table, replace(base, max_hits=max_hits), L, T


@dataclass
class EventBatch:
    """A run as a sum over events: shape buckets, their sharding, and the flat parameter layout.

    Flat unconstrained vector ``x = [theta_u (k free parameters, in PARAM_NAMES order),
    then per bucket its (E, L + T) local latents row by row]``; :meth:`split` / :meth:`join`
    convert it to (theta_u, locals per bucket).
    """

    card: DetectorCard
    free: tuple[str, ...]
    fixed: dict[str, float]
    buckets: list[EventBucket]
    prior: dict[str, np.ndarray]  # per latent of the combined vector, (n_latent_total,) each
    stop_mass_MeV: float | None
    n_latent_total: int
    n_stop_total: int
    mesh: Mesh | None = None

    # -- layout -------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.free)

    @property
    def dim(self) -> int:
        return self.k + sum(b.n_events * b.n_local for b in self.buckets)

    @property
    def tables(self) -> tuple[jax.Array, ...]:
        return tuple(b.table for b in self.buckets)

    def split(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Flat x -> (theta_u (k,), [locals (E_b, L_b + T_b) per bucket])."""
        th, out, i = x[: self.k], [], self.k
        for b in self.buckets:
            n = b.n_events * b.n_local
            out.append(x[i:i + n].reshape(b.n_events, b.n_local))
            i += n
        return th, out

    def join(self, theta_u: jax.Array, locs: list[jax.Array]) -> jax.Array:
        return jnp.concatenate([theta_u] + [loc.reshape(-1) for loc in locs])

    # -- potential ----------------------------------------------------------------------------
    def theta_physical(self, theta_u: jax.Array) -> dict[str, jax.Array]:
        """theta_p = lo + (hi - lo) sigmoid(u_p) (NumPyro's map of a Uniform prior); fixed ones."""
        out = {}
        for j, p in enumerate(self.free):
            spec = self.card.param(p)
            out[p] = spec.low + (spec.high - spec.low) * jax.nn.sigmoid(theta_u[j])
        for p, v in self.fixed.items():
            out[p] = jnp.asarray(v, theta_u.dtype)
        return out

    def prior_potential(self, theta_u: jax.Array) -> jax.Array:
        """U_0 = -sum_p [log sigmoid(u_p) + log sigmoid(-u_p)] (uniform prior + log-Jacobian)."""
        return -jnp.sum(jax.nn.log_sigmoid(theta_u) + jax.nn.log_sigmoid(-theta_u))

    def event_potential(self, b: int, theta_u: jax.Array, loc: jax.Array, ev: EventData,
                        table: jax.Array) -> jax.Array:
        """U_e of one event of bucket ``b`` (unbatched ``ev`` / ``table``), in nats."""
        bk = self.buckets[b]
        L = bk.n_latent
        z, shift = loc[:L], loc[L:]
        pr = dict(zip(_PRIOR_KEYS, ev.prior, strict=True))
        s = latent_scale(pr)
        w = ev.weight
        dEdx = (pr["loc"] + s * z)[ev.seg_latent]
        if bk.n_stop:
            # the residual-range dE/dx on stopping segments only; elsewhere (MIP segments of the
            # group, padding) a regular stand-in (10-11 cm, no shift), so that the unselected
            # branch of the where has finite derivatives of every order (no NaN through the where)
            is_stop = ev.seg_stop >= 0
            d = jnp.where(is_stop, shift[jnp.maximum(ev.seg_stop, 0)], 0.0)
            r_near = jnp.where(is_stop, ev.r_near, 10.0)
            r_far = jnp.where(is_stop, ev.r_far, 11.0)
            rho = self.card.physics.lar_density_g_cm3
            m = self.stop_mass_MeV
            val = residual_range_energy(r_near, r_far, d, m, rho) / (r_far - r_near)
            dEdx = jnp.where(is_stop, val, dEdx)
        dEdx = jnp.maximum(dEdx, 1e-3)
        th = self.theta_physical(theta_u)
        params = DetectorParams(*(th[p] for p in PARAM_NAMES))
        if ev.seg_cumulants is not None:  # padding segments have zero cumulants: unchanged
            dEdx = straggled_dEdx(dEdx, ev.seg_cumulants, params, self.card.physics)
        charges = expected_charge((ev.sub, ev.buckets), dEdx, params, self.card)
        rel = {} if ev.straggling is None else {"charge_straggling": ev.straggling}
        ll = log_likelihood(charges, ev.buckets, table, ev.n_outside, self.card.electronics,
                            bk.config, **rel)
        lp_z = SplitStudentT(0.0, pr["s_left"] / s, pr["s_right"] / s, pr["nu_left"],
                             pr["nu_right"]).log_prob(z)
        u = -ll - jnp.sum(ev.lat_mask * lp_z)
        pad_sq = jnp.sum((1 - w * ev.lat_mask) * z * z)
        if bk.n_stop:
            lp_d = -0.5 * (shift / END_SHIFT_SD_CM) ** 2 - jnp.log(
                END_SHIFT_SD_CM * jnp.sqrt(2 * jnp.pi))
            u = u - jnp.sum(ev.stop_mask * lp_d)
            pad_sq = pad_sq + jnp.sum((1 - w * ev.stop_mask) * shift * shift)
        return w * u + 0.5 * pad_sq

    def bucket_potentials(self, b: int, theta_u, locs_b, data: EventData, table) -> jax.Array:
        """(E_b,) U_e of every event of bucket ``b`` (vmapped over its events)."""
        return jax.vmap(lambda loc, ev, tb: self.event_potential(b, theta_u, loc, ev, tb))(
            locs_b, data, table)

    def potential(self, x: jax.Array, tables: tuple | None = None) -> jax.Array:
        """Total U(x) = U_0 + sum over buckets and events of U_e (nats)."""
        tables = self.tables if tables is None else tables
        th, locs = self.split(x)
        total = self.prior_potential(th)
        for b, bk in enumerate(self.buckets):
            total = total + self.bucket_potentials(b, th, locs[b], bk.data, tables[b]).sum()
        return total

    # -- sharding -----------------------------------------------------------------------------
    def shard(self, mesh: Mesh) -> EventBatch:
        """The same batch with every bucket's event axis laid out over ``mesh`` axis "events"
        (bucket sizes must be multiples of the mesh size: :func:`build_event_batch` pads them)."""
        n = mesh.devices.size
        ev = NamedSharding(mesh, P("events"))
        new = []
        for bk in self.buckets:
            if bk.n_events % n:
                raise ValueError(f"bucket of {bk.n_events} events does not divide over {n} "
                                 "devices; build the batch with devices=...")
            put = lambda a: jax.device_put(a, ev)  # noqa: E731
            new.append(replace(bk, data=jax.tree.map(put, bk.data), table=put(bk.table)))
        return replace(self, buckets=new, mesh=mesh)

    @property
    def dtype(self):
        """Floating dtype of the batch's arrays (float32 or float64)."""
        return self.buckets[0].data.weight.dtype

    def place_rows(self, a: jax.Array) -> jax.Array:
        """``a`` (m, G, ...) with its group axis (axis 1) over the mesh (no-op without one)."""
        if self.mesh is None:
            return a
        return jax.device_put(a, NamedSharding(self.mesh, P(None, "events")))

    def place(self, x: jax.Array) -> jax.Array:
        """x replicated over the mesh (no-op without one)."""
        if self.mesh is None:
            return x
        return jax.device_put(x, NamedSharding(self.mesh, P()))

    # -- sites --------------------------------------------------------------------------------
    def pack(self, sites: dict[str, Any]) -> np.ndarray:
        """Unconstrained sites of the combined problem ({free theta_u}, z_dEdx (n_latent_total,),
        end_shift_cm (n_stop_total,)) -> flat x (padding latents 0)."""
        th = np.asarray([np.asarray(sites[p]) for p in self.free], np.float64).reshape(-1)
        z = np.asarray(sites.get("z_dEdx", np.zeros(self.n_latent_total)), np.float64)
        d = np.asarray(sites.get("end_shift_cm", np.zeros(self.n_stop_total)), np.float64)
        locs = []
        for bk in self.buckets:
            loc = np.zeros((bk.n_events, bk.n_local))
            li, si = bk.lat_index, bk.stop_index
            loc[:, : bk.n_latent] = np.where(li >= 0, z[np.maximum(li, 0)], 0.0)
            if bk.n_stop:
                loc[:, bk.n_latent:] = np.where(si >= 0, d[np.maximum(si, 0)], 0.0)
            locs.append(loc.reshape(-1))
        return np.concatenate([th, *locs])

    def unpack(self, xs: np.ndarray) -> dict[str, np.ndarray]:
        """Flat draws (n, dim) -> sites in physical units: the six parameters, ``z_dEdx``,
        ``dEdx`` (MeV/cm) and ``end_shift_cm`` in the combined problem's order."""
        xs = np.atleast_2d(np.asarray(xs, np.float64))
        n = xs.shape[0]
        out: dict[str, np.ndarray] = {}
        for j, p in enumerate(self.free):
            spec = self.card.param(p)
            out[p] = spec.low + (spec.high - spec.low) / (1 + np.exp(-xs[:, j]))
        z = np.zeros((n, self.n_latent_total))
        d = np.zeros((n, self.n_stop_total))
        i = self.k
        for bk in self.buckets:
            m = bk.n_events * bk.n_local
            loc = xs[:, i:i + m].reshape(n, bk.n_events, bk.n_local)
            i += m
            ok = bk.lat_index >= 0
            z[:, bk.lat_index[ok]] = loc[:, :, : bk.n_latent][:, ok]
            if bk.n_stop:
                ok = bk.stop_index >= 0
                d[:, bk.stop_index[ok]] = loc[:, :, bk.n_latent:][:, ok]
        if self.n_latent_total:
            out["z_dEdx"] = z
            out["dEdx"] = self.prior["loc"] + latent_scale(self.prior) * z  # (n_latent_total,)
        if self.n_stop_total:
            out["end_shift_cm"] = d
        return out


def _local_layout(pb: CalibrationProblem, segments: Segments) -> tuple[np.ndarray, np.ndarray]:
    """Event id of each local latent of a (multi-event) problem, z latents then stopping shifts,
    and its rank within its event (z first, then shifts): the colour of the block Hessian."""
    ev_seg = np.asarray(segments.event_id, np.int64)
    lat_ev = np.full(pb.n_latent, -1, np.int64)
    s2l = pb.seg_to_latent
    lat_ev[s2l[s2l >= 0]] = ev_seg[s2l >= 0]
    st = pb.stopping
    n_stop = st.n if st is not None else 0
    stop_ev = np.full(n_stop, -1, np.int64)
    if n_stop:
        stop_ev[st.track[st.track >= 0]] = ev_seg[st.track >= 0]
    events = np.concatenate([lat_ev, stop_ev])
    colour = np.zeros(events.size, np.int64)
    for e in np.unique(events):
        idx = np.nonzero(events == e)[0]  # z latents of the event first, then its shifts
        colour[idx] = np.arange(idx.size)
    return events, colour


def _assign_groups(cost: np.ndarray, n_local: np.ndarray, n_groups: int,
                   max_local: int) -> list[list[int]]:
    """Longest-processing-time assignment of events to ``n_groups`` groups: events by decreasing
    ``cost`` each to the cheapest group that still has room for its ``n_local`` latents (the
    cheapest group when none has); groups come out with similar cost, so padding them to one
    shape wastes little."""
    load = np.zeros(n_groups)
    room = np.full(n_groups, max_local, np.int64)
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    for i in np.argsort(-cost, kind="stable"):
        fits = room >= n_local[i]
        g = int(np.argmin(np.where(fits, load, np.inf))) if fits.any() else int(np.argmin(load))
        groups[g].append(int(i))
        load[g] += cost[i]
        room[g] -= n_local[i]
    return [sorted(g) for g in groups]


def build_event_batch(
    card: DetectorCard,
    segments: Segments,
    hits: Hits,
    *,
    latent_length_cm: float = 4.0,
    likelihood: LikelihoodConfig | None = None,
    fixed: dict[str, float] | None = None,
    n_groups: int | None = None,
    max_group_latents: int = MAX_GROUP_LATENTS,
    devices: list | None = None,
    shard: bool = True,
    dtype=jnp.float32,
    progress=None,
    problem_kwargs: dict[str, Any] | None = None,
) -> EventBatch:
    """Group the events and plan every group as one problem (module docstring, "Groups").

    ``n_groups`` (default: the fewest groups, a multiple of the device count of ``devices``
    (default every device), that hold at most ``max_group_latents`` local latents each) groups
    of similar size (:func:`_assign_groups` on each event's track length); every group is planned
    by :func:`lartpc_bayes.model.build_problem` on its events' segments and hits, the groups are
    padded to one shape and stacked (groups added for the device count have weight 0); with
    ``shard`` the group axis is laid out over :func:`event_mesh`. ``progress(stage, done,
    total)`` is called while planning; ``problem_kwargs`` go to ``build_problem``.
    Geometry latents (reco) are not supported here (each event's reconstructed geometry would
    have to be split too): use :class:`lartpc_bayes.infer.LaplaceFitter` with the dense Hessian.
    """
    likelihood = likelihood or LikelihoodConfig()
    if likelihood.kind != "ppp":
        raise ValueError("the event-batched potential supports the PPP likelihood only")
    fixed = dict(fixed or {})
    per = split_events(segments, None)  # segments per event; hits are selected per group
    if not per:
        raise ValueError("no events in the segments")
    M = card.electronics.max_hits_per_pixel
    kw = dict(problem_kwargs or {})
    stop_pdg = kw.get("stopping_pdg", STOPPING_PDG)
    # host sizes of every event: latents, stopping tracks (the local count) and track length
    ids = np.asarray([ev for ev, _, _ in per], np.int64)
    n_lat, n_stop, cost = [], [], []
    for _, s, _ in per:
        st = stopping_tracks(s, stop_pdg)
        n_lat.append(latent_segments(s, latent_length_cm, mask=st.track < 0)[1])
        n_stop.append(st.n)
        cost.append(float(np.sum(s.dx)) + 1e-3)
    n_lat, n_stop = np.asarray(n_lat), np.asarray(n_stop)
    n_dev = len(devices if devices is not None else jax.devices())
    if n_groups is None:
        need = int(np.ceil((n_lat + n_stop).sum() / max(1, max_group_latents)))
        n_groups = n_dev * max(1, int(np.ceil(need / n_dev)))
    n_real = min(int(n_groups), ids.size)
    members = [g for g in _assign_groups(np.asarray(cost), n_lat + n_stop, n_real,
                                         max_group_latents) if g]
    lat0 = dict(zip(ids.tolist(), np.concatenate([[0], np.cumsum(n_lat)])[:-1].tolist(),
                    strict=True))
    stop0 = dict(zip(ids.tolist(), np.concatenate([[0], np.cumsum(n_stop)])[:-1].tolist(),
                     strict=True))
    n_lat_of = dict(zip(ids.tolist(), n_lat.tolist(), strict=True))
    host, layouts, masses = [], [], set()
    for j, g in enumerate(members):
        mask_s = np.isin(segments.event_id, ids[g])
        seg_g = segments.select(mask_s)
        hits_g = _select_hits(hits, np.isin(hits.event_id, ids[g]))
        pb = build_problem(card, seg_g, hits_g, latent_length_cm=latent_length_cm,
                           likelihood=replace(likelihood, max_hits=()), fixed=fixed, **kw)
        if not pb.likelihood.max_hits:  # no hits: smallest lists
            pb.likelihood = replace(pb.likelihood,
                                    max_hits=hit_list_sizes(pb.plan, pb.table))
        if pb.stopping is not None:
            masses.update(pb.stopping.mass_MeV)
        host.append(pb)
        layouts.append(_local_layout(pb, seg_g))
        if progress is not None:
            progress("planning", j + 1, len(members))
    if len(masses) > 1:
        raise ValueError(f"stopping tracks of several masses {sorted(masses)}: not supported")
    mass = masses.pop() if masses else None
    arrs = [_event_arrays(pb, mass) for pb in host]
    n_pad = (-len(arrs)) % n_dev
    rows = list(range(len(arrs))) + [0] * n_pad
    weights = [1.0] * len(arrs) + [0.0] * n_pad
    data, table, cfg, L, T = _stack_bucket([arrs[i] for i in rows], weights, M, likelihood,
                                           dtype)
    G = len(rows)
    lat_index, stop_index = np.full((G, L), -1), np.full((G, T), -1)
    local_event, local_colour = np.full((G, L + T), -1), np.full((G, L + T), -1)
    prior = {k: np.zeros(int(n_lat.sum())) for k in _PRIOR_KEYS}
    for r, (pb, (ev, col)) in enumerate(zip(host, layouts, strict=True)):
        nl = pb.n_latent
        ns = ev.size - nl
        glob = np.asarray([lat0[e] for e in ev[:nl]], np.int64) + col[:nl]
        lat_index[r, :nl] = glob
        # a shift's colour is its event's latent count plus its rank among the event's shifts
        stop_index[r, :ns] = [stop0[e] + c - n_lat_of[e] for e, c in zip(ev[nl:], col[nl:],
                                                                         strict=True)]
        pos = np.r_[np.arange(nl), L + np.arange(ns)]
        local_event[r, pos] = ev
        local_colour[r, pos] = col
        for k in _PRIOR_KEYS:
            prior[k][glob] = np.broadcast_to(np.asarray(pb.prior[k], np.float64), (nl,))
    groups = np.asarray([r if r < len(arrs) else -1 for r in range(G)])
    bucket = EventBucket(data, table, cfg, groups, L, T, lat_index, stop_index,
                         local_event, local_colour,
                         tuple(tuple(int(i) for i in ids[g]) for g in members))
    batch = EventBatch(card, tuple(p for p in PARAM_NAMES if p not in fixed), fixed, [bucket],
                       prior, mass, int(n_lat.sum()), int(n_stop.sum()))
    if shard and n_dev > 1:
        batch = batch.shard(event_mesh(devices))
    return batch
