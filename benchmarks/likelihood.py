"""Likelihood and controllable generation against exact answers (the figures of issue 6).

1. Probability-flow log-likelihood vs the exact log p_{t_min} of a Gaussian mixture: error against
   solver tolerance and NFE, for VP / sub-VP / VE in 2 and 8 dimensions (exact trace, float64, exact
   prior log p_T), the prior mismatch of the default N(0, sigma_T^2 I) prior, the scipy backend, and
   Hutchinson's estimator (bias and spread over probes).
2. Guided sampling: sample mean / covariance errors against the selected component (classifier
   guidance with the exact classifier, classifier-free guidance with exact conditional scores).
3. Imputation: sample moment errors against the exact conditional, for the exact conditional score,
   the replacement method and reconstruction guidance, on a correlated Gaussian and a bimodal mixture.

Run: ``python benchmarks/likelihood.py`` (about 10 minutes on 2 busy CPU cores; ``--quick`` for a smoke run,
``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import scoresde as sd
from scoresde import guidance as G
from scoresde import toy
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n_points = 4 if args.quick else 8
    tols = (1e-3, 1e-6) if args.quick else (1e-3, 1e-5, 1e-7, 1e-9)
    likelihood_table(n_points, tols, device)
    hutchinson_table(device)
    guidance_table(2000 if args.quick else 20000, device)
    imputation_table(500 if args.quick else 4000, device, args.quick)


if __name__ == "__main__":
    main()
