"""The measurements of docs/light.md: SIREN against the library, SIREN trained on muon light with a
changed attenuation length, and what light adds to the charge posterior. Each returns a dict of
numbers (and optionally writes a figure);
``python -m lartpc_bayes.validation.light_study OUTDIR`` runs all
three at the documented sizes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from ..light.card import LightCard, load_light_card
from ..light.library import build_library
from ..light.siren import (
    Siren,
    channel_mask,
    library_data,
    log_offset,
    relative_error,
    simulate_muon_light,
    train_on_events,
    train_on_library,
)


def siren_vs_library(card: LightCard, *, voxel_cm: float = 2.0, width: int = 64, depth: int = 3,
                     steps: int = 2000, seed: int = 0, figure: str | Path | None = None):
    """(a): SIREN trained on the library; held-out error, parameter count vs voxel count."""
    t0 = time.perf_counter()
    lib = build_library(card, voxel_cm)
    t_build = time.perf_counter() - t0
    model, info = train_on_library(card, lib, width=width, depth=depth, steps=steps, batch=4096,
                                   lr=1e-3, seed=seed)
    data = library_data(card, lib)
    out = {"voxel_cm": voxel_cm, "n_voxels": lib.n_voxels, "n_entries": info["n_entries"],
           "n_params": info["n_params"], "build_s": t_build, "train_s": info["train_s"],
           **{k: float(v) for k, v in info.items() if k.startswith("heldout_")}}
    if figure is not None:
        _figure_siren(card, lib, model, data, info, figure)
    return model, lib, out


def _figure_siren(card, lib, model, data, info, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..light.siren import predict

    c = next(i for i, t in enumerate(card.tiles) if t.kind == "arclight" and t.tpc == 0)
    xyz, _ = lib.centres()
    iz = lib.shape[2] // 2
    sl = xyz[0, :, :, iz].reshape(-1, 3)
    v_lut = lib.vis[0, :, :, iz, c]
    v_nn = np.asarray(predict(model, sl, channel_mask(card, sl)))[:, c].reshape(v_lut.shape)
    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    ext = [sl[:, 1].min(), sl[:, 1].max(), sl[:, 0].min(), sl[:, 0].max()]
    for a, v, t in ((ax[0], v_lut, "library"), (ax[1], v_nn, "SIREN")):
        im = a.imshow(np.log10(v), origin="lower", extent=ext, aspect="auto")
        a.set_title(f"log10 visibility, channel {c} ({t}), z = {sl[0, 2]:.1f} cm")
        a.set_xlabel("y [cm]")
        a.set_ylabel("x [cm]")
        plt.colorbar(im, ax=a)
    im = ax[2].imshow(v_nn / v_lut - 1, origin="lower", extent=ext, aspect="auto", cmap="RdBu",
                      vmin=-0.2, vmax=0.2)
    ax[2].set_title("SIREN / library - 1")
    plt.colorbar(im, ax=ax[2])
    ax[3].semilogy(info["loss"])
    ax[3].set_xlabel("Adam step")
    ax[3].set_ylabel("weighted L2 on log V")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def siren_from_muons(card: LightCard, nominal: Siren, *, attenuation_cm: float = 50.0,
                     n_events: int = 1500, steps: int = 1500, voxel_cm: float = 2.0,
                     seed: int = 1, from_scratch: bool = True, figure: str | Path | None = None):
    """(b): muon light simulated with a changed attenuation length; the SIREN fine-tuned (and
    trained from a fresh init) with the Poisson likelihood of the pe per channel, no library.
    Error against the library of the changed truth, before and after."""
    events = simulate_muon_light(card, n_events, seed, attenuation_cm=attenuation_cm)
    truth = build_library(card, voxel_cm, attenuation_cm=attenuation_cm)
    nom_lib = build_library(card, voxel_cm)
    data = library_data(card, truth)
    idx = np.random.default_rng(seed).permutation(data.xyz.shape[0])[:20000]
    xyz, mask, vis = data.xyz[idx], data.mask[idx], data.vis[idx]
    from ..light.siren import compare

    out = {"attenuation_truth_cm": attenuation_cm, "attenuation_nominal_cm": card.attenuation_cm,
           "n_events": n_events, "pe_per_event": float(events.pe.sum(1).mean()),
           "nominal_library_vs_truth": compare(nom_lib.vis.reshape(-1, truth.n_channels)[idx],
                                               vis, mask),
           "nominal_siren_vs_truth": relative_error(nominal, xyz, mask, vis)}
    tuned, tinfo = train_on_events(card, events, nominal, steps=steps, lr=2e-4, seed=seed)
    out["finetuned_siren_vs_truth"] = relative_error(tuned, xyz, mask, vis)
    out["finetune_s"] = tinfo["train_s"]
    losses = {"fine-tune": tinfo["loss"]}
    if from_scratch:
        lo, hi = card.bounds
        fresh = Siren(card.n_channels, lo, hi, width=nominal.out_w.shape[1],
                      depth=len(nominal.layers), offset=log_offset(library_data(card, nom_lib)),
                      key=jax.random.key(seed + 11))
        scratch, sinfo = train_on_events(card, events, fresh, steps=2 * steps, lr=1e-3,
                                         seed=seed)
        out["scratch_siren_vs_truth"] = relative_error(scratch, xyz, mask, vis)
        out["scratch_s"] = sinfo["train_s"]
        losses["from scratch"] = sinfo["loss"]
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for k, v in losses.items():
            ax[0].plot(np.convolve(v, np.ones(25) / 25, mode="valid"), label=k)
        ax[0].set_xlabel("Adam step (64 muons)")
        ax[0].set_ylabel("Poisson NLL per channel (running mean)")
        ax[0].set_yscale("symlog")
        ax[0].legend()
        keys = [k for k in out if k.endswith("_vs_truth")]
        x = np.arange(len(keys))
        ax[1].bar(x - 0.2, [out[k]["median_w"] for k in keys], 0.4, label="median")
        ax[1].bar(x + 0.2, [out[k]["p95_w"] for k in keys], 0.4, label="95th pct")
        ax[1].set_xticks(x, [k.replace("_vs_truth", "").replace("_", " ") for k in keys],
                         rotation=15)
        ax[1].set_ylabel(f"|V/V_true - 1| (visibility-weighted), L_att = {attenuation_cm} cm")
        ax[1].set_yscale("log")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(figure, dpi=90)
        plt.close(fig)
    return tuned, out


def what_light_adds(card: LightCard, *, length_cm: float = 6.5, latent_cm: float = 5.0,
                    track_seed: int = 11, data_seed: int = 5, fit_gain: bool = True,
                    figure: str | Path | None = None):
    """(5): the same fake data (one muon piece at the demo target) fitted by MAP + Laplace with
    charge alone, charge + light with the light gain fixed, and (``fit_gain``) free."""
    from ..calibrate import DEMO_TARGET
    from ..detector import PARAM_NAMES, DetectorParams, load_card
    from ..forward.generator import SelectionCuts, generate
    from ..forward.simulate import simulate_hits
    from ..light.likelihood import plan_light, simulate_light
    from ..light.model import fit_joint
    from ..model import build_problem

    ccard = load_card(card.charge_card)
    seg = generate(ccard, "muons", 1, track_seed,
                   cuts=SelectionCuts(min_angle_to_drift_deg=60))
    seg = seg.select(np.cumsum(seg.dx) <= length_cm)
    P = DetectorParams.from_dict(DEMO_TARGET)
    hits, _ = simulate_hits(jax.random.key(data_seed), ccard, seg, P)
    problem = build_problem(ccard, seg, hits, latent_length_cm=latent_cm)
    lp = plan_light(card, seg)
    light = simulate_light(data_seed, lp, seg.dEdx, P, ccard.physics, card)
    runs = {"charge": {"use_light": False}, "charge+light": {"use_light": True}}
    if fit_gain:
        runs["charge+light, gain free"] = {"use_light": True, "fit_gain": True}
    out = {"length_cm": float(seg.dx.sum()), "n_latent": problem.n_latent,
           "pe_total": float(light.pe.sum()), "true_dEdx": float(seg.dE.sum() / seg.dx.sum())}
    samples = {}
    for name, kw in runs.items():
        r = fit_joint(problem, lp, card, light.pe, seed=0, num_samples=4000, **kw)
        s = r["samples"]
        samples[name] = s
        out[name] = {
            "fit_s": r["fit_s"],
            "corr_A_B_k_B": float(np.corrcoef(s["A_B"], s["k_B"])[0, 1]),
            "dEdx_sd": [float(v) for v in s["dEdx"].std(0)],
            "dEdx_mean": [float(v) for v in s["dEdx"].mean(0)],
            **{f"{p}_mean": float(s[p].mean()) for p in PARAM_NAMES},
            **{f"{p}_sd": float(s[p].std()) for p in PARAM_NAMES},
        }
        if "light_gain" in s:
            out[name]["gain_mean"] = float(s["light_gain"].mean())
            out[name]["gain_sd"] = float(s["light_gain"].std())
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
        for name, s in samples.items():
            ax[0].scatter(s["A_B"][:800], s["k_B"][:800], s=3, alpha=0.4, label=name)
            ax[1].hist(s["dEdx"][:, 0], bins=60, histtype="step", density=True, label=name)
            ax[2].hist(s["E"], bins=60, histtype="step", density=True, label=name)
        ax[0].plot(DEMO_TARGET["A_B"], DEMO_TARGET["k_B"], "k*", ms=12, label="target")
        ax[0].set_xlabel("A_B")
        ax[0].set_ylabel("k_B [(kV/cm)(g/cm2)/MeV]")
        ax[1].axvline(out["true_dEdx"], color="k", ls="--", label="true mean dE/dx")
        ax[1].set_xlabel("latent dE/dx [MeV/cm]")
        ax[2].axvline(DEMO_TARGET["E"], color="k", ls="--")
        ax[2].set_xlabel("E [kV/cm]")
        for a in ax[:2]:
            a.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(figure, dpi=90)
        plt.close(fig)
    return out


def main(outdir: str = "docs/figures") -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    card = load_light_card()
    res = {}
    model, _lib, res["siren_vs_library"] = siren_vs_library(card,
                                                            figure=out / "light_siren.png")
    print(json.dumps(res["siren_vs_library"], indent=1), flush=True)
    _, res["siren_from_muons"] = siren_from_muons(card, model, figure=out / "light_muons.png")
    print(json.dumps(res["siren_from_muons"], indent=1), flush=True)
    res["what_light_adds"] = what_light_adds(card, figure=out / "light_posterior.png")
    print(json.dumps(res["what_light_adds"], indent=1), flush=True)
    (out / "light_results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
