"""Likelihood and controllable generation against exact answers (the figures of issue 6).

1. Probability-flow log-likelihood vs the exact log p_{t_min} of a Gaussian mixture: error against
   solver tolerance and NFE, for VP / sub-VP / VE in 2 and 8 dimensions (exact trace, float64, exact
   prior log p_T), the prior mismatch of the default N(0, sigma_T^2 I) prior, the scipy backend, and
   Hutchinson's estimator (bias and spread over probes).
2. Guided sampling: sample mean / covariance errors against the selected component (classifier
   guidance with the exact classifier, classifier-free guidance with exact conditional scores).
3. Imputation: sample moment errors against the exact conditional, for the exact conditional score,
   the replacement method and reconstruction guidance, on a correlated Gaussian and a bimodal mixture.
4. The variational bound on the oracle: its gap to the exact NLL against N (10 to 1000) for VP, sub-VP
   and cosine, both reverse variances, beside the continuous-time bound and the PF-ODE (the baseline);
   the figure is ``figures/bound_gap.png`` (``python benchmarks/make_figures.py --only bound_gap``).
5. Digits (scikit-learn's 8x8 digits, 17 levels, scaled to [-1, 1], uniform dequantisation) on the fixed
   split of :func:`scoresde.images.digits` (360 test images; the image models are trained on the other
   1437): test-split bits/dim of two independent baselines fitted to the dequantised training data,
   scikit-learn's ``GaussianMixture`` (full covariance, number of components chosen on a validation part of
   the training split, then refitted on all of it) and a diagonal Gaussian; :func:`model_bits_per_dim`, PF-ODE
   and bound bits/dim of any ``ScoreModel`` on the same test split, run on the fitted GaussianMixture made a
   diffusion model by its exact score (its PF-ODE must reproduce the mixture's own bits/dim: an end-to-end
   check of the image path), and on the trained U-Net and DiT of ``benchmarks/images.py`` found in ``--runs``.
   Goal: the diffusion models below the GaussianMixture.

Run: ``python benchmarks/likelihood.py`` (about 10 minutes on 2 busy CPU cores; ``--quick`` for a smoke run,
``--only bound digits`` for parts 4-5, ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import scoresde as sd
from scoresde import guidance as G
from scoresde import toy
from scoresde.bounds import variational_bound
from scoresde.likelihood import log_likelihood
from scoresde.samplers import sample

SDES = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}


def likelihood_table(n: int, tols, device) -> None:
    print("\n== 1. PF-ODE log-likelihood vs exact log p_{t_min} (float64, exact trace, dopri5) ==")
    print(f"{'sde':6s} {'D':>2s} {'tol':>7s} {'NFE':>5s} {'max|err| exact prior':>21s} {'max|err| N(0,s_T^2) prior':>26s} {'sec':>6s}")
    for dim in (2, 8):
        mix = toy.gaussian_mixture_2d() if dim == 2 else toy.anisotropic_mixture(dim)
        x = mix.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
        for name, cls in SDES.items():
            sde = cls()
            model = mix.model(sde)
            exact = mix.log_prob_t(x, sde.t_min, sde)
            for tol in tols:
                start = time.perf_counter()
                res = log_likelihood(model, x, rtol=tol, atol=tol, prior_log_prob=lambda z, s=sde: mix.log_prob_t(z, s.T, s))
                wall = time.perf_counter() - start
                default_prior = res.delta_log_p + sde.prior_log_prob(res.latent)
                print(f"{name:6s} {dim:2d} {tol:7.0e} {res.nfe:5d} "
                      f"{float((res.log_likelihood - exact).abs().max()):21.2e} "
                      f"{float((default_prior - exact).abs().max()):26.2e} {wall:6.2f}")
    # backends
    mix, sde = toy.anisotropic_mixture(8), sd.SubVPSDE()
    x = mix.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    exact = mix.log_prob_t(x, sde.t_min, sde)
    print("\nbackends (sub-VP, D = 8, exact prior):")
    for backend, method in (("torchdiffeq", "dopri5"), ("scipy", "RK45"), ("scipy", "DOP853"), ("scipy", "LSODA")):
        for tol in (1e-5, 1e-8):
            res = log_likelihood(mix.model(sde), x, backend=backend, method=method, rtol=tol, atol=tol,
                                 prior_log_prob=lambda z: mix.log_prob_t(z, sde.T, sde))
            print(f"  {backend:11s} {method:7s} tol {tol:.0e}: NFE {res.nfe:5d}  max|err| "
                  f"{float((res.log_likelihood - exact).abs().max()):.2e}")


def hutchinson_table(device) -> None:
    print("\n== Hutchinson's estimator on the whole log-likelihood (VE, D = 8, 256 copies of one point) ==")
    mix, sde = toy.anisotropic_mixture(8), sd.VESDE()
    model = mix.model(sde)
    x0 = mix.sample(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    exact = float(log_likelihood(model, x0, estimator="exact", rtol=1e-8, atol=1e-8).log_likelihood)
    x = x0.expand(256, -1).clone()
    for probe in ("rademacher", "gaussian"):
        for k in (1, 4, 16):
            res = log_likelihood(model, x, estimator="hutchinson", probe=probe, n_probes=k, rtol=1e-7, atol=1e-7,
                                 generator=torch.Generator(device).manual_seed(0))
            est = res.log_likelihood
            se = float(est.std()) / math.sqrt(len(est))
            print(f"  {probe:10s} n_probes {k:2d}: bias {float(est.mean()) - exact:+.4f} (s.e. {se:.4f}), "
                  f"std per estimate {float(est.std()):.4f}, NFE {res.nfe}")


def moment_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> str:
    x = x.double().cpu()
    dm = float((x.mean(0) - mean).abs().max())
    dc = float((torch.cov(x.T).reshape(cov.shape) - cov).abs().max())
    se = float((torch.diagonal(cov) / x.shape[0]).sqrt().max())
    return f"mean err {dm:.4f} (s.e. {se:.4f})  cov err {dc:.4f}"


def guidance_table(n: int, device) -> None:
    print(f"\n== 2. Guided sampling vs the selected component ({n} samples, dpm_solver++ 25 steps) ==")
    mix = toy.gaussian_mixture_2d()
    for name in ("vp", "ve"):
        sde = SDES[name]()
        fn, null = G.mixture_conditional_fn(mix, sde)
        for k in range(mix.n_components):
            comp = mix.component(k)
            for label, model in (
                ("classifier w=1", G.classifier_guidance(mix.model(sde), G.mixture_classifier(mix, sde), k)),
                ("CFG w=1", G.classifier_free_guidance(fn, sde, k, 1.0, null_label=null, parameterization="score")),
            ):
                res = sample(model, sde, "dpm_solver++", 25, shape=(n, 2), dtype=torch.float64,
                             generator=torch.Generator(device).manual_seed(k))
                print(f"  {name:3s} component {k} {label:15s}: {moment_errors(res.samples, comp.mean(), comp.covariance())}")
        # guidance scale 0: the unconditional mixture
        res = sample(G.classifier_guidance(mix.model(sde), G.mixture_classifier(mix, sde), 0, scale=0.0), sde,
                     "dpm_solver++", 25, shape=(n, 2), dtype=torch.float64, generator=torch.Generator(device).manual_seed(9))
        print(f"  {name:3s} scale 0 vs the mixture     : {moment_errors(res.samples, mix.mean(), mix.covariance())}")


def imputation_table(n: int, device, quick: bool) -> None:
    print(f"\n== 3. Imputation vs the exact conditional ({n} samples, VP) ==")
    sde = sd.VPSDE()
    cases = {
        "correlated Gaussian rho=0.8, x0=1.5": (
            toy.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.8], [0.8, 1.0]]]), [1.5, 0.0], [True, False], 1.0),
        "gaussian_mixture_2d, x1=0.2 (bimodal)": (toy.gaussian_mixture_2d(), [0.0, 0.2], [False, True], None),
    }
    samplers = (("ddim", 100, {}), ("ddim", 100, {"eta": 1.0}), ("pc", 100, {"n_corrector_steps": 1}))
    if not quick:
        samplers += (("pc", 100, {"n_corrector_steps": 5}),)
    for title, (mix, yv, maskv, data_var) in cases.items():
        y, mask = torch.tensor(yv, dtype=torch.float64), torch.tensor(maskv)
        cond = G.conditional_mixture(mix, y, mask)
        print(f" {title}: exact conditional mean {cond.mean().tolist()}, variance {cond.covariance().flatten().tolist()}")
        base = mix.model(sde)
        methods = {
            "exact": lambda: G.mixture_imputation(mix, sde, y, mask),
            "replacement": lambda: G.replacement_imputation(base, y, mask, generator=torch.Generator(device).manual_seed(0)),
            "reconstruction": lambda: G.reconstruction_guidance(base, y, mask),
        }
        if data_var is not None:
            methods["reconstruction v"] = lambda: G.reconstruction_guidance(base, y, mask, data_var=data_var)
        for label, make in methods.items():
            for method, steps, opts in samplers:
                model = make()
                res = sample(model, sde, method, steps, shape=(n, 2), dtype=torch.float64,
                             generator=torch.Generator(device).manual_seed(1), **opts)
                xu = model.fill(res.samples)[:, ~mask.to(res.samples.device)]
                print(f"  {label:16s} {method:4s} {steps} {str(opts):26s}: {moment_errors(xu, cond.mean(), cond.covariance())}"
                      f"  NFE {res.nfe}")


# ---------------------------------------------------------------------------------------------
# 4. The variational bound on the oracle
# ---------------------------------------------------------------------------------------------
def bound_gap_table(quick: bool) -> None:
    from scoresde.studies.bound_gap import bound_gap

    steps = (10, 100) if quick else (10, 20, 50, 100, 200, 500, 1000)
    n = 200 if quick else 500
    print(f"\n== 4. Variational bound - exact NLL on eight_gaussians ({n} points, exact score, nats, mean +- s.e.) ==")
    study = bound_gap(toy.mixture("eight_gaussians"), steps=steps, n=n, continuous_n_t=64 if quick else 256)
    for name in dict.fromkeys(r["sde"] for r in study.rows):
        (ode,) = study.select(sde=name, method="pf_ode")
        (cont,) = study.select(sde=name, method="continuous")
        print(f"  {name}: baseline PF-ODE (-log p_t_min, Gaussian prior) {ode['gap']:+.5f} +- {ode['se']:.5f}; "
              f"continuous bound {cont['gap']:+.4f} +- {cont['se']:.4f}")
        for rv in ("beta", "posterior"):
            cells = "  ".join(f"N={r['N']}: {r['gap']:.3g}+-{r['se']:.2g}"
                              for r in study.select(sde=name, method="discrete", reverse_variance=rv))
            print(f"    {rv:9s} {cells}")


# ---------------------------------------------------------------------------------------------
# 5. Digits: baselines and any score model, in bits/dim on the test split
# ---------------------------------------------------------------------------------------------
DIGITS_LEVELS = 17


def digits_splits(seed: int = 0) -> dict[str, torch.Tensor]:
    """The digits (values 0..16) scaled to [-1, 1] as (n, 1, 8, 8) float64, on the library's fixed split
    (:func:`scoresde.images.digits`: test = every fifth image, 360; train = the other 1437, on which the
    image models of ``benchmarks/images.py`` are trained). ``fit``/``val`` split the training images 80/20
    (seeded) to choose the GaussianMixture's number of components; the chosen one is refitted on ``train``."""
    from scoresde.images import digits

    train, test = digits("train").x.double(), digits("test").x.double()
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    n_fit = int(0.8 * len(perm))
    return {"train": train, "fit": train[perm[:n_fit]], "val": train[perm[n_fit:]], "test": test}


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantisation over the cell centred on each value: x + w (u - 1/2), w = 2/(levels - 1)."""
    w = 2 / (levels - 1)
    return x + w * (torch.rand(x.shape, generator=generator, dtype=x.dtype) - 0.5)


def density_bpd(log_density: torch.Tensor, dim: int, levels: int) -> torch.Tensor:
    """Bits/dim of discrete data from the density of their dequantised versions: -(log p + D log w)/(D log 2)."""
    return -(log_density + dim * math.log(2 / (levels - 1))) / (dim * math.log(2))


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std()) / math.sqrt(v.numel())


def digits_baselines(splits: dict, *, components=(1, 2, 4, 8, 16, 32), seed: int = 0) -> dict:
    """Diagonal Gaussian and full-covariance GaussianMixture fitted to the dequantised training split.

    The number of mixture components is the one with the best dequantised validation bits/dim when fitted
    on ``fit``; that K is refitted on all of ``train``. All bits/dim are on one dequantisation of the test
    split. Returns the numbers and the fitted mixture.
    """
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    g = torch.Generator().manual_seed(seed)
    y = {k: dequantize(v, DIGITS_LEVELS, g).reshape(v.shape[0], -1) for k, v in splits.items()}
    dim = y["train"].shape[1]
    mean, var = y["train"].mean(0), y["train"].var(0)
    diag = torch.distributions.Normal(mean, var.sqrt()).log_prob(y["test"]).sum(1)
    out = {"diagonal": _mean_se(density_bpd(diag, dim, DIGITS_LEVELS))}
    val = {}
    for k in components:
        gm = SkGaussianMixture(k, covariance_type="full", random_state=seed, max_iter=200)
        gm.fit(y["fit"].numpy())
        val[k] = float(density_bpd(torch.from_numpy(gm.score_samples(y["val"].numpy())), dim, DIGITS_LEVELS).mean())
    best = min(val, key=val.get)
    gm = SkGaussianMixture(best, covariance_type="full", random_state=seed, max_iter=200).fit(y["train"].numpy())
    test = density_bpd(torch.from_numpy(gm.score_samples(y["test"].numpy())), dim, DIGITS_LEVELS)
    out.update(gmm=_mean_se(test), gmm_components=best, gmm_val=val, gmm_fit=gm)
    return out


def ddpm_first_noise_time(sde: sd.SDE, levels: int) -> float:
    """The t at which sigma(t)/delta equals DDPM's sigma_1/delta = sqrt(1e-4) * 255 (about 2.55 half-bins).

    DDPM's first step (beta_1 = 1e-4 on 8-bit data) puts sigma_1 at 2.55 half-widths of a bin; at that ratio
    the discretised decoder, not the KL terms, accounts for the quantisation. Solved by lam (sde.t_of_lam).
    """
    sigma = math.sqrt(1e-4) * 255 / (levels - 1)
    alpha = float(sde.alpha(torch.tensor(0.0, dtype=torch.float64)))
    # lam is monotone in t; near t = 0 alpha is ~1 for the VP family, so lam ~ log(sqrt(1 - sigma^2) / sigma)
    lam = math.log(alpha * math.sqrt(max(1 - sigma**2, 1e-12)) / sigma)
    return float(sde.t_of_lam(torch.tensor(lam, dtype=torch.float64)))


def model_bits_per_dim(model: sd.ScoreModel, x: torch.Tensor, levels: int, *, steps: int | None = None,
                       n_probes: int = 4, ode_tol: float = 1e-5, bound_estimator: str = "exact", n_t: int = 8,
                       bound_t_min: float | None = None, seed: int = 0) -> dict:
    """PF-ODE bits/dim (dequantised at ``levels``, Hutchinson with ``n_probes``) and the discrete variational
    bound's bits/dim (discretised decoder, first grid point ``bound_t_min``, default the SDE's t_min) of any
    ``ScoreModel`` on images ``x`` in [-1, 1]; mean and s.e."""
    ode = log_likelihood(model, x, levels=levels, estimator="hutchinson", n_probes=n_probes, rtol=ode_tol,
                         atol=ode_tol, generator=torch.Generator(x.device).manual_seed(seed))
    bound = variational_bound(model, x, steps=steps, levels=levels, estimator=bound_estimator, n_t=n_t,
                              t_min=bound_t_min, generator=torch.Generator(x.device).manual_seed(seed + 1))
    return {"ode": _mean_se(ode.bits_per_dim()), "ode_nfe": ode.nfe, "bound": (bound.bpd, bound.bpd_se),
            "bound_steps": bound.steps, "bound_nfe": bound.nfe}


def digits_table(quick: bool, device, runs) -> None:
    print("\n== 5. Digits (8x8, 17 levels, [-1, 1], uniform dequantisation): test-split bits/dim (mean +- s.e.) ==")
    start = time.perf_counter()
    splits = digits_splits()
    comps = (1, 2, 4) if quick else (1, 2, 4, 8, 16, 32)
    base = digits_baselines(splits, components=comps)
    print(f"  {len(splits['train'])} train ({len(splits['fit'])} fit + {len(splits['val'])} validation to choose K) / "
          f"{len(splits['test'])} test images (the fixed split of scoresde.images.digits)")
    print(f"  baseline diagonal Gaussian           {base['diagonal'][0]:.4f} +- {base['diagonal'][1]:.4f}")
    vals = ", ".join(f"K={k}: {v:.3f}" for k, v in base["gmm_val"].items())
    print(f"  baseline GaussianMixture (full, K={base['gmm_components']:2d}) {base['gmm'][0]:.4f} +- {base['gmm'][1]:.4f}"
          f"   (validation: {vals})")
    # the fitted mixture as a diffusion model (exact score under VP): the image path end to end
    gm = base["gmm_fit"]
    mix = toy.GaussianMixture(gm.weights_ / gm.weights_.sum(), gm.means_, gm.covariances_)
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda z, t: mix.score(z.reshape(z.shape[0], -1), t, sde).reshape(z.shape), sde, "score")
    x = splits["test"][:64] if quick else splits["test"]
    res = model_bits_per_dim(model, x.to(device), DIGITS_LEVELS, steps=100 if quick else 1000)
    y = dequantize(x, DIGITS_LEVELS, torch.Generator().manual_seed(1)).reshape(len(x), -1)
    own = _mean_se(density_bpd(torch.from_numpy(gm.score_samples(y.numpy())), y.shape[1], DIGITS_LEVELS))
    print(f"  the GaussianMixture's exact score under VP, through model_bits_per_dim on {len(x)} test images "
          f"(baseline: the mixture's own bits/dim on them {own[0]:.4f} +- {own[1]:.4f}):")
    print(f"    PF-ODE (Hutchinson, 4 probes, NFE {res['ode_nfe']}) {res['ode'][0]:.4f} +- {res['ode'][1]:.4f}; "
          f"discrete bound (N = {res['bound_steps']}, t_1 = {sde.t_min:g}, NFE {res['bound_nfe']}) "
          f"{res['bound'][0]:.4f} +- {res['bound'][1]:.4f}")
    # The model knows only dequantised data: at small noise its denoiser spreads x0 over the cell while the data
    # sit on the lattice, and the KL terms below sigma ~ bin width pay for it (more steps do not help). Starting
    # the chain where DDPM's first noise level sits relative to the bins lets the decoder do that work instead.
    t1 = ddpm_first_noise_time(sde, DIGITS_LEVELS)
    b = variational_bound(model, x.to(device), steps=100 if quick else 1000, levels=DIGITS_LEVELS, t_min=t1,
                          generator=torch.Generator(device).manual_seed(1))
    print(f"    discrete bound with t_1 = {t1:.4g} (sigma_1 = 2.55 half-bins, DDPM's ratio): {b.bpd:.4f} +- "
          f"{b.bpd_se:.4f} (decoder {float(b.reconstruction.mean()):.1f} nats, KL sum {float(b.diffusion.mean()):.1f})"
          f"   ({time.perf_counter() - start:.0f} s)")
    trained_models_table(runs, splits["test"], base, quick, device)


def trained_models_table(runs, x: torch.Tensor, base: dict, quick: bool, device, n_images: int = 128) -> None:
    """PF-ODE and discrete-bound bits/dim of the U-Net and DiT runs of ``benchmarks/images.py`` on the test split."""
    from pathlib import Path

    from scoresde.training import CHECKPOINT_NAME, load_model

    found = [n for n in ("unet", "dit") if (Path(runs) / n / CHECKPOINT_NAME).exists()]
    if not found:
        print(f"  no trained image models in {runs} (python benchmarks/images.py trains them)")
        return
    # the PF-ODE with Hutchinson's trace costs a vector-Jacobian product per call: a fixed subset of the test split
    x = x[:64] if quick else x[:n_images]
    gm = base["gmm_fit"]
    y = dequantize(x, DIGITS_LEVELS, torch.Generator().manual_seed(1)).reshape(len(x), -1)
    gmm = _mean_se(density_bpd(torch.from_numpy(gm.score_samples(y.numpy())), y.shape[1], DIGITS_LEVELS))[0]
    x = x.to(device=device, dtype=torch.float32)
    n_t = 8 if quick else 32
    print(f"  the GaussianMixture on the first {len(x)} test images (the baseline for the models): {gmm:.4f}")
    print(f"  trained models from {runs} on {len(x)} test images: PF-ODE (dopri5 1e-5, Hutchinson 4 probes) and "
          f"the N = 1000 discrete bound (beta, t_1 at DDPM's sigma_1, {n_t} sampled steps per image, unbiased)")
    for name in found:
        start = time.perf_counter()
        model, _ = load_model(Path(runs) / name, device=device)
        t1 = ddpm_first_noise_time(model.sde, DIGITS_LEVELS)
        res = model_bits_per_dim(model, x, DIGITS_LEVELS, steps=1000, bound_estimator="uniform", n_t=n_t,
                                 bound_t_min=t1)
        ode, bound = res["ode"], res["bound"]
        verdict = "below" if ode[0] < gmm else "NOT below"
        print(f"    {name:4s}: PF-ODE {ode[0]:.4f} +- {ode[1]:.4f} (NFE {res['ode_nfe']}); bound {bound[0]:.4f} +- "
              f"{bound[1]:.4f}; GaussianMixture {gmm:.4f}: PF-ODE "
              f"{verdict} GaussianMixture ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="benchmarks/results/image_runs",
                        help="folder with the unet/ and dit/ runs of benchmarks/images.py (part 5)")
    parts = ("likelihood", "guidance", "imputation", "bound", "digits")
    parser.add_argument("--only", nargs="*", choices=parts, default=list(parts))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    n_points = 4 if args.quick else 8
    tols = (1e-3, 1e-6) if args.quick else (1e-3, 1e-5, 1e-7, 1e-9)
    if "likelihood" in args.only:
        likelihood_table(n_points, tols, device)
        hutchinson_table(device)
    if "guidance" in args.only:
        guidance_table(2000 if args.quick else 20000, device)
    if "imputation" in args.only:
        imputation_table(500 if args.quick else 4000, device, args.quick)
    if "bound" in args.only:
        bound_gap_table(args.quick)
    if "digits" in args.only:
        digits_table(args.quick, device, args.runs)


if __name__ == "__main__":
    main()
