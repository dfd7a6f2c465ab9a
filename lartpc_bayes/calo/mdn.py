"""Talk-003 uncertainty-aware regression: a dense network predicting a Gaussian mixture of log10 R.

Target ``y = log10 R`` with ``R = E_EM / E_true`` (``E_EM`` the EM-scale layer sum). Inputs: the
standardised ``log10 E_EM`` [GeV] and the layer fractions ``x_i / E_EM``. The network
(``hidden_layers`` x ``hidden_units``, ReLU) outputs, per event, ``K`` logits, means and widths of
a Gaussian mixture

    p(y | x) = sum_k pi_k N(y; mu_k, sigma_k),   pi = softmax(logits),
    mu_k = m_y + s_y u_k,   sigma_k = s_y softplus(v_k) + sigma_floor,

with ``m_y``, ``s_y`` the training mean and sd of ``y``. It is trained on the negative
log-likelihood ``-log p(y|x)``, evaluated as a ``logsumexp`` of ``log_softmax(logits) + log N``
(never exponentiated before the sum), with Adam and a step-decayed learning rate; one epoch
(shuffle, then a ``lax.scan`` over all mini-batches) is a single compiled function.

Prediction (talk 003, "prediction = mode"): ``y_hat = argmax_y p(y|x)`` from the fixed-point
(mean-shift) iteration ``y <- sum_k r_k mu_k / sigma_k^2 / sum_k r_k / sigma_k^2``,
``r_k = pi_k N(y; mu_k, sigma_k)``, which is exactly the stationarity condition ``p'(y) = 0``,
started at every ``mu_k``, polished by guarded Newton steps on ``log p`` and resolved by the highest
density.
Then ``R_model = 10^y_hat`` and ``E_model = E_EM / R_model``. Uncertainties: ``sigma_68`` = half the
central 68.27 % interval of the mixture (from its CDF), and the mixture standard deviation
``sigma_syst`` (talk: ``sum pi (sigma^2 + mu^2) - (sum pi mu)^2``). In energy,
``sigma_E / E = ln(10) sigma_y`` to first order.

The BNN comparison of the talk is a deep ensemble: ``M`` networks from different initialisations and
data orders, trained in one compiled program (``vmap`` over members). Its predictive distribution is
the equal-weight mixture of the members' mixtures; ``sigma_stat`` is the spread of the member modes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from .card import Mdn
from .mixture import (
    mixture_cdf,
    mixture_log_prob,
    mixture_mode,
    mixture_moments,
    mixture_sigma68,
)

Params = list[dict[str, jnp.ndarray]]


# ------------------------------------------------------------------------------------------
# Features and the network
# ------------------------------------------------------------------------------------------


def make_features(layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs ``[log10 E_EM, x_i / E_EM]`` (N, L + 1) and ``E_EM`` [GeV] (>= 1 MeV)."""
    x = np.asarray(layers, dtype=np.float64)
    e_em = np.maximum(x.sum(axis=1), 1e-3)
    feats = np.concatenate([np.log10(e_em)[:, None], x / e_em[:, None]], axis=1)
    return feats.astype(np.float32), e_em


def log10_response(layers: np.ndarray, e_true: np.ndarray) -> np.ndarray:
    """Training target ``y = log10(E_EM / E_true)``."""
    _, e_em = make_features(layers)
    return np.log10(e_em / np.asarray(e_true, dtype=np.float64)).astype(np.float32)


def init_mlp(key: jax.Array, sizes: list[int]) -> Params:
    """He-normal weights (``sqrt(2/fan_in)``, for ReLU) and zero biases; the output layer is scaled
    by 0.1 so that the initial mixture is close to the standardised target distribution."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        scale = math.sqrt(2.0 / n_in) * (0.1 if i == len(sizes) - 2 else 1.0)
        params.append({"w": scale * jax.random.normal(k, (n_in, n_out)), "b": jnp.zeros((n_out,))})
    return params


def mlp_apply(params: Params, x: jnp.ndarray) -> jnp.ndarray:
    """Dense network with ReLU between layers and a linear output."""
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def mixture_from_output(
    out: jnp.ndarray, y_mean: float, y_std: float, sigma_floor: float
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Split the (N, 3K) output into log-weights, means and widths (log10 R units)."""
    k = out.shape[-1] // 3
    log_w = jax.nn.log_softmax(out[..., :k], axis=-1)
    mu = y_mean + y_std * out[..., k : 2 * k]
    sigma = y_std * jax.nn.softplus(out[..., 2 * k :]) + sigma_floor
    return log_w, mu, sigma


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standardizer:
    """Feature means/sds and target mean/sd of the training set (float32)."""

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> Standardizer:
        return cls(
            x.mean(axis=0).astype(np.float32),
            np.maximum(x.std(axis=0), 1e-6).astype(np.float32),
            float(np.mean(y)),
            float(np.std(y)),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.x_mean) / self.x_std).astype(np.float32)


def _nll(
    params: Params, x: jnp.ndarray, y: jnp.ndarray, y_mean: float, y_std: float, floor: float
) -> jnp.ndarray:
    log_w, mu, sigma = mixture_from_output(mlp_apply(params, x), y_mean, y_std, floor)
    return -jnp.mean(mixture_log_prob(log_w, mu, sigma, y))


def lr_schedule(cfg: Mdn, steps_per_epoch: int) -> optax.Schedule:
    """Step decay (PyTorch StepLR/MultiStepLR): ``lr * gamma^j`` after the j-th milestone epoch."""
    bounds = {m * steps_per_epoch: cfg.lr_gamma for m in cfg.lr_milestones}
    return optax.piecewise_constant_schedule(cfg.learning_rate, bounds)


@dataclass
class MdnModel:
    """A trained mixture network or deep ensemble (parameters with a leading member axis)."""

    params: Params
    standardizer: Standardizer
    components: int
    sigma_floor: float
    mode_iterations: int
    history: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)

    @property
    def members(self) -> int:
        return int(self.params[0]["w"].shape[0])

    def mixture(self, layers: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Per-member mixtures ``(M, N, K)`` of ``y = log10 R`` for the events' layers."""
        return self._mixture(make_features(layers)[0])

    def _mixture(self, feats: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        x = jnp.asarray(self.standardizer(feats))
        out = jax.vmap(mlp_apply, in_axes=(0, None))(self.params, x)
        s = self.standardizer
        return mixture_from_output(out, s.y_mean, s.y_std, self.sigma_floor)

    def predict(
        self, layers: np.ndarray, e_true: np.ndarray | None = None, chunk: int = 65536
    ) -> dict[str, np.ndarray]:
        """Predictions per event.

        ``y_mode`` (mode of the predictive mixture, log10 R), ``e_model = E_EM / 10^y_mode`` [GeV],
        ``sigma68`` (half the central 68 % interval, log10 R units), ``sigma_syst`` (mean over
        members of the mixture sd), ``sigma_stat`` (sd of the member modes, 0 for one network),
        ``e_em`` and, with ``e_true``: ``y_true`` and the PIT ``u = F(y_true)``.
        """
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, layers.shape[0], chunk):
            sl = slice(start, start + chunk)
            parts.append(self._predict_chunk(layers[sl], None if e_true is None else e_true[sl]))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _predict_chunk(
        self, layers: np.ndarray, e_true: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        feats, e_em = make_features(layers)
        log_w, mu, sigma = self._mixture(feats)
        out = _predict_jit(log_w, mu, sigma, self.mode_iterations)
        res = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
        res["e_em"] = e_em
        res["e_model"] = e_em / 10.0 ** res["y_mode"]
        if e_true is not None:
            y_true = np.log10(e_em / np.asarray(e_true, dtype=np.float64))
            m = log_w.shape[0]
            comb = _combine(log_w, mu, sigma, m)
            res["y_true"] = y_true
            res["pit"] = np.asarray(
                mixture_cdf(*comb, jnp.asarray(y_true, jnp.float32)), dtype=np.float64
            )
        return res

    def to_tree(self) -> dict[str, Any]:
        s = self.standardizer
        return {
            "params": {f"layer{i:02d}": dict(p) for i, p in enumerate(self.params)},
            "standardizer": {
                "x_mean": s.x_mean,
                "x_std": s.x_std,
                "y_mean": s.y_mean,
                "y_std": s.y_std,
            },
            "config": {
                "components": self.components,
                "sigma_floor": self.sigma_floor,
                "mode_iterations": self.mode_iterations,
            },
            "history": dict(self.history),
            "info": {k: np.asarray(v) for k, v in self.info.items()},
        }

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> MdnModel:
        layers = sorted(tree["params"])
        params = [{k: jnp.asarray(v) for k, v in tree["params"][n].items()} for n in layers]
        st = tree["standardizer"]
        cfg = tree["config"]
        return cls(
            params=params,
            standardizer=Standardizer(
                np.asarray(st["x_mean"]),
                np.asarray(st["x_std"]),
                float(st["y_mean"]),
                float(st["y_std"]),
            ),
            components=int(cfg["components"]),
            sigma_floor=float(cfg["sigma_floor"]),
            mode_iterations=int(cfg["mode_iterations"]),
            history={k: np.asarray(v) for k, v in tree.get("history", {}).items()},
            info={k: float(v) for k, v in tree.get("info", {}).items()},
        )


def _combine(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray, m: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Equal-weight mixture of the ``m`` member mixtures: (M, N, K) -> (N, M K)."""

    def flat(a: jnp.ndarray) -> jnp.ndarray:
        return jnp.moveaxis(a, 0, -2).reshape(a.shape[1], -1)

    return flat(log_w - math.log(m)), flat(mu), flat(sigma)


@partial(jax.jit, static_argnums=3)
def _predict_jit(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray, iterations: int
) -> dict[str, jnp.ndarray]:
    m = log_w.shape[0]  # static: the number of members
    comb = _combine(log_w, mu, sigma, m)
    y_mode = mixture_mode(*comb, iterations=iterations)
    if m > 1:
        member_modes = mixture_mode(log_w, mu, sigma, iterations=iterations)  # (M, N)
        sigma_stat = jnp.std(member_modes, axis=0)
    else:
        sigma_stat = jnp.zeros_like(y_mode)
    _, var = mixture_moments(log_w, mu, sigma)
    return {
        "y_mode": y_mode,
        "sigma68": mixture_sigma68(*comb),
        "sigma_syst": jnp.mean(jnp.sqrt(var), axis=0),
        "sigma_stat": sigma_stat,
    }


def train_mdn(
    layers: np.ndarray,
    e_true: np.ndarray,
    cfg: Mdn,
    *,
    members: int = 1,
    epochs: int | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> MdnModel:
    """Train ``members`` mixture networks (``members > 1``: a deep ensemble) on the events.

    The last ``cfg.validation_fraction`` of the events is held out for the validation NLL recorded
    per epoch in ``history``; mini-batches of ``cfg.batch_size`` are drawn from a fresh permutation
    each epoch (the remainder of an epoch is dropped). Each member keeps the parameters of its epoch
    with the lowest validation NLL (early-stopping model selection: on small samples the mixture
    widths collapse onto training points and the validation NLL turns up).
    """
    t_start = time.perf_counter()
    n_epochs = cfg.epochs if epochs is None else epochs
    key = jax.random.PRNGKey(cfg.seed if seed is None else seed)
    feats, _ = make_features(layers)
    y = log10_response(layers, e_true)
    n_val = max(1, round(cfg.validation_fraction * len(y)))
    n_train = len(y) - n_val
    std = Standardizer.fit(feats[:n_train], y[:n_train])
    x_tr, y_tr = jnp.asarray(std(feats[:n_train])), jnp.asarray(y[:n_train])
    x_va, y_va = jnp.asarray(std(feats[n_train:])), jnp.asarray(y[n_train:])
    batch = min(cfg.batch_size, n_train)
    n_batches = n_train // batch
    sizes = [x_tr.shape[1], *([cfg.hidden_units] * cfg.hidden_layers), 3 * cfg.components]
    opt = optax.adam(lr_schedule(cfg, n_batches))
    loss = jax.value_and_grad(_nll)
    consts = (std.y_mean, std.y_std, cfg.sigma_floor)

    def epoch(params: Params, opt_state: Any, k: jax.Array) -> tuple[Params, Any, jnp.ndarray]:
        idx = jax.random.permutation(k, n_train)[: n_batches * batch].reshape(n_batches, batch)

        def step(carry: tuple[Params, Any], ib: jnp.ndarray) -> tuple[tuple[Params, Any], Any]:
            p, s = carry
            value, grads = loss(p, x_tr[ib], y_tr[ib], *consts)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, opt_state), values = jax.lax.scan(step, (params, opt_state), idx)
        return params, opt_state, jnp.mean(values)

    k_init, k_data = jax.random.split(key)
    params = jax.vmap(lambda k: init_mlp(k, sizes))(jax.random.split(k_init, members))
    opt_state = jax.vmap(opt.init)(params)
    run_epoch = jax.jit(jax.vmap(epoch))
    val_nll = jax.jit(jax.vmap(lambda p: _nll(p, x_va, y_va, *consts)))

    @jax.jit
    def keep_best(best: Params, params: Params, improved: jnp.ndarray) -> Params:
        def pick(b: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
            return jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)

        return jax.tree_util.tree_map(pick, best, params)

    best, best_val = params, np.full(members, np.inf)
    best_epoch = np.zeros(members)
    hist_train, hist_val = [], []
    t_compiled = None
    for ep in tqdm(range(n_epochs), disable=not progress, desc="calo mdn", unit="epoch"):
        keys = jax.random.split(jax.random.fold_in(k_data, ep), members)
        params, opt_state, tr = run_epoch(params, opt_state, keys)
        val = np.asarray(val_nll(params))
        improved = val < best_val
        best = keep_best(best, params, jnp.asarray(improved))
        best_val = np.where(improved, val, best_val)
        best_epoch = np.where(improved, ep + 1, best_epoch)
        hist_train.append(np.asarray(tr))
        hist_val.append(val)
        if ep == 0:
            t_compiled = time.perf_counter()
    t_end = time.perf_counter()
    epoch_time = (t_end - t_compiled) / max(1, n_epochs - 1) if t_compiled else float("nan")
    return MdnModel(
        params=best,
        standardizer=std,
        components=cfg.components,
        sigma_floor=cfg.sigma_floor,
        mode_iterations=cfg.mode_iterations,
        history={"train_nll": np.stack(hist_train), "val_nll": np.stack(hist_val)},
        info={
            "n_train": float(n_train),
            "n_val": float(n_val),
            "epochs": float(n_epochs),
            "members": float(members),
            "batch_size": float(batch),
            "steps_per_epoch": float(n_batches),
            "runtime_s": t_end - t_start,
            "epoch_time_s": epoch_time,
            "best_epoch_min": float(best_epoch.min()),
            "best_epoch_max": float(best_epoch.max()),
        },
    )


__all__ = [
    "MdnModel",
    "Standardizer",
    "init_mlp",
    "log10_response",
    "lr_schedule",
    "make_features",
    "mixture_from_output",
    "mlp_apply",
    "train_mdn",
]
