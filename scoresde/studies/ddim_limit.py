r"""DDIM as the ODE limit: one step is exponential Euler in log-SNR, N steps converge like C/N.

**The identity.** Write the probability-flow ODE ``dx/dt = f x - g^2 s / 2`` with the noise
prediction ``eps = -sigma s``. Since ``g^2 = 2 sigma sigma' - 2 f sigma^2`` one checks
``g^2 / (2 sigma alpha) = d(sigma/alpha)/dt``, so by variation of constants

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t + \alpha_s \int_t^s \frac{d}{d\tau}\Big(\frac{\sigma}{\alpha}\Big)\, \varepsilon(x_\tau, \tau)\, d\tau .

Freezing ``eps`` at ``(x_t, t)`` (exponential Euler, Hochbruck & Ostermann 2010) gives, with
``h = lambda_s - lambda_t``,

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s (e^{h} - 1)\, \varepsilon(x_t, t),

DPM-Solver-1 (Lu et al. 2022, eq. 3.7), which is algebraically DDIM(eta=0) (Song, Meng & Ermon
2021, eq. 12): :func:`ddim_identity` checks the two agree to rounding, and checks the integrating
factor ``alpha_s int_t^s d(sigma/alpha)`` by quadrature of the SDE's own ``f`` and ``g^2``.

**The limit.** Exponential Euler has global order 1, so DDIM with N steps converges to the
black-box ODE solution with error ~ C/N (:func:`ddim_convergence`, log-log slope near -1) for every
SDE of the family, including the discrete DDPM schedule placed in continuous time.

**The eta family.** DDIM(eta) interpolates between the ODE (eta = 0) and DDPM's ancestral sampler
(eta = 1, a discretisation of the reverse SDE); every member samples the same marginals in the
limit, and :func:`eta_family` measures their distribution error against steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._progress import progress as progress_bar
from ..models import ScoreModel
from ..samplers import sample
from ..sde import SDE
from .distances import distribution_error, two_sample_level
from .error_vs_steps import ErrorVsSteps, error_vs_steps
from .method_specs import check_steps
from .output import sde_name

__all__ = ["exp_euler_step", "ddim_identity", "ddim_convergence", "eta_family", "DDIMLimit", "EtaFamily"]


def exp_euler_step(model: ScoreModel, x: Tensor, t: float, s: float) -> Tensor:
    """One exponential-Euler step of the PF ODE from t to s in log-SNR, from the score (one model call)."""
    sde = model.sde
    tt = torch.tensor([t, s], dtype=torch.float64)
    alpha, sigma = sde.alpha_sigma(tt)
    lam = sde.lam(tt)
    h = float(lam[1] - lam[0])
    eps = -float(sigma[0]) * model.score(x, t)
    return (float(alpha[1]) / float(alpha[0])) * x - float(sigma[1]) * math.expm1(h) * eps


def _integrating_factor_by_quadrature(sde: SDE, t: float, s: float, pieces: int = 256) -> tuple[float, float]:
    """``alpha_s int_t^s g^2 / (2 sigma alpha) dtau`` by composite Gauss-Legendre, and its closed form.

    The integrand is built from the SDE's own ``f`` and ``g^2`` (not from lambda), so agreement with
    ``-sigma_s (e^h - 1)`` checks that DDIM's coefficient is that of the PF ODE. Breakpoints include
    the knots of a piecewise schedule (:class:`~scoresde.sde.DiscreteVPSDE`), where the integrand jumps.
    """
    import numpy as np

    lo, hi = min(t, s), max(t, s)
    cuts = torch.linspace(lo, hi, pieces + 1, dtype=torch.float64)
    if hasattr(sde, "N"):
        knots = torch.arange(1, int(sde.N), dtype=torch.float64) / sde.N
        cuts = torch.unique(torch.cat([cuts, knots[(knots > lo) & (knots < hi)]]))
    nodes, weights = (torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(8))
    a, b = cuts[:-1, None], cuts[1:, None]
    tau = 0.5 * (a + b) + 0.5 * (b - a) * nodes
    alpha, sig = sde.alpha_sigma(tau)
    integrand = sde.g2(tau) / (2 * sig * alpha)
    val = float((0.5 * (b - a) * weights * integrand).sum()) * (1.0 if s > t else -1.0)
    tt = torch.tensor([t, s], dtype=torch.float64)
    alpha_ts, sigma_ts = sde.alpha_sigma(tt)
    lam = sde.lam(tt)
    h = float(lam[1] - lam[0])
    return float(alpha_ts[1]) * val, -float(sigma_ts[1]) * math.expm1(h)


def ddim_identity(model: ScoreModel, x: Tensor, pairs=((1.0, 0.5), (0.5, 0.1), (0.1, 0.01))) -> list[dict]:
    """Compare one DDIM(eta=0) step with one exponential-Euler step for each (t, s) in ``pairs``.

    Rows: ``max_abs_diff`` and ``rel_diff``, the max |diff| over the size of the largest term of the
    step (``alpha_s/alpha_t x_t`` or ``sigma_s (e^h - 1) eps``: when e^h is large the two terms nearly
    cancel, and rounding is relative to them, not to x_s), to compare with the dtype's machine
    epsilon ``machine_eps``; and ``factor_rel_diff``: the relative gap between the
    closed-form coefficient ``-sigma_s (e^h - 1)`` and the quadrature of ``g^2/(2 sigma alpha)``.
    """
    sde = model.sde
    rows = []
    for t, s in pairs:
        ddim = sample(model, sde, "ddim", x_T=x, grid=torch.tensor([t, s], dtype=torch.float64)).samples
        ee = exp_euler_step(model, x, t, s)
        diff = float((ddim - ee).abs().max())
        tt = torch.tensor([t, s], dtype=torch.float64)
        alpha, sigma = sde.alpha_sigma(tt)
        h = float(sde.lam(tt)[1] - sde.lam(tt)[0])
        eps = -float(sigma[0]) * model.score(x, t)
        scale = max(float((float(alpha[1] / alpha[0]) * x).abs().max()),
                    float((float(sigma[1]) * math.expm1(h) * eps).abs().max()))
        quad_val, closed = _integrating_factor_by_quadrature(sde, t, s)
        rows.append({"sde": sde_name(sde), "t": t, "s": s, "max_abs_diff": diff,
                     "rel_diff": diff / scale, "machine_eps": torch.finfo(x.dtype).eps,
                     "factor_quadrature": quad_val, "factor_closed_form": closed,
                     "factor_rel_diff": abs(quad_val - closed) / abs(closed)})
    return rows


@dataclass
class DDIMLimit:
    """The identity rows, and per SDE the DDIM(eta=0) error-vs-steps study against the PF ODE."""

    identity: list[dict]
    convergence: dict[str, ErrorVsSteps]

    def rows(self) -> list[dict]:
        out = []
        for name, study in self.convergence.items():
            fit = study.fits[("ddim", study.rows[0]["grid"])]
            for r in study.rows:
                out.append({"sde": name, "steps": r["steps"], "nfe": r["nfe"], "endpoint_error": r["endpoint_error"],
                            "reference_error": study.references["pf_ode"].error,
                            "fitted_slope": None if fit is None else fit.slope})
        return out

    def slopes(self) -> dict[str, float | None]:
        return {name: (None if (f := s.fits[("ddim", s.rows[0]["grid"])]) is None else f.slope)
                for name, s in self.convergence.items()}


def ddim_convergence(sdes: dict[str, SDE], mixture, steps=(8, 16, 32, 64, 128, 256), *, n: int = 256,
                     grid: str = "logsnr", seed: int = 0, pairs=((1.0, 0.5), (0.5, 0.1), (0.1, 0.01)),
                     ref_tol: float = 1e-12, progress: bool = False) -> DDIMLimit:
    """For each SDE: the one-step identity and DDIM(eta=0) error against steps vs the dopri5 reference.

    The start ``x_T`` is drawn in float64 from each SDE's prior with the same generator seed.
    """
    steps = check_steps(steps)
    if not sdes:
        raise ValueError("sdes: expected at least one SDE")
    identity, conv = [], {}
    for name, sde in progress_bar(sdes.items(), desc="ddim limit", enabled=progress):
        model = mixture.model(sde)
        gen = torch.Generator().manual_seed(seed)
        x_T = sde.prior_sample((n, mixture.dim), generator=gen, dtype=torch.float64)
        x_mid = mixture.sample(n, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
            n, mixture.dim, generator=gen, dtype=torch.float64)
        for row in ddim_identity(model, x_mid, pairs):
            identity.append({**row, "sde": name})
        conv[name] = error_vs_steps(model, ["ddim"], steps, grids=grid, x_T=x_T, distribution=False, seed=seed,
                                    ref_tol=ref_tol)
    return DDIMLimit(identity, conv)


@dataclass
class EtaFamily:
    """Distribution error of DDIM(eta) against steps, with one draw of the two-sample level (see
    :func:`~scoresde.studies.distances.two_sample_level`)."""

    rows: list[dict]
    floors: dict[str, float] = field(default_factory=dict)
    data_log_density: float | None = None


def eta_family(model: ScoreModel, mixture, etas=(0.0, 0.25, 0.5, 0.75, 1.0), steps=(5, 10, 20, 50, 100), *,
               n: int = 1000, grid: str = "logsnr", seed: int = 0, progress: bool = False) -> EtaFamily:
    """DDIM(eta) for each eta and step count from the same x_T and the same noise seed.

    Measured against fresh data: exact W2, sliced W2 and the mean exact log-density of the samples.
    """
    steps = check_steps(steps)
    etas = [float(e) for e in etas]
    if not etas or any(not math.isfinite(e) or e < 0 or e > 1 for e in etas):
        raise ValueError(f"etas: expected a non-empty list of numbers in [0, 1], got {etas}")
    sde = model.sde
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, mixture.dim), generator=gen, dtype=torch.float64)
    data = mixture.sample(n, generator=gen, dtype=torch.float64)
    data2 = mixture.sample(n, generator=gen, dtype=torch.float64)
    floors = two_sample_level([data2], data)
    rows = []
    bar = progress_bar(total=len(etas) * len(steps), desc="eta family", enabled=progress)
    for eta in etas:
        for N in steps:
            res = sample(model, sde, "ddim", N, x_T=x_T, grid=grid, eta=eta,
                         generator=torch.Generator().manual_seed(seed + 1))
            rows.append({"eta": eta, "steps": N, "nfe": res.nfe, **distribution_error(res.samples, data, mixture)})
            bar.update(1)
    bar.close()
    return EtaFamily(rows, floors, float(mixture.log_prob(data2).mean()))
