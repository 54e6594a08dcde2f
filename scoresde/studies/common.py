r"""What every study shares: method specs, input checks, reference solutions, distances, order fits, CSV.

* A *method spec* is a registered sampler name, optionally with options: ``"ddim"``,
  ``"ddim:eta=0.5"`` or ``("ddim", {"eta": 0.5})``. :func:`parse_method` turns any of them into a
  :class:`Method` with a label for tables and legends.
* The reference for a deterministic sampler is the probability-flow ODE solved from the same
  ``x_T`` by torchdiffeq's dopri5 at tight tolerance; its own error is estimated by solving again
  at half the tolerance (:func:`reference_pf_ode`). The reference for a stochastic sampler is the
  reverse SDE on the *same* torchsde Brownian path, by Euler-Maruyama on a much finer uniform grid
  (:func:`reference_reverse_sde`): for these SDEs the noise is additive (g depends on t only), so
  Euler-Maruyama converges strongly with order 1 and a fine grid is an honest reference.
* Distances between samples and data: exact W2 by optimal transport and the sliced W2
  (:mod:`scoresde.metrics`), each reported beside the *two-sample floor*,
  the same distance between two independent data draws of the same size (no sampler can beat it
  with that many points).
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import grids as _grids
from ..models import ScoreModel
from ..samplers import available, get_sampler
from ..sde import SDE

__all__ = ["Method", "parse_method", "parse_methods", "check_steps", "check_grids", "reference_pf_ode",
           "reference_reverse_sde", "Reference", "endpoint_error", "w2_exact", "sliced_w2",
           "distribution_error", "fit_order", "OrderFit", "write_csv", "check_writable_dir"]


# ----- method specs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A registered sampler with its options, and the label used in tables and legends."""

    name: str
    options: tuple = ()
    label: str = ""

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def cls(self):
        return get_sampler(self.name)

    def instance(self):
        return self.cls(**self.opts)


def _literal(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_method(spec) -> Method:
    """``"name"``, ``"name:key=value,key=value"``, ``(name, options)`` or a :class:`Method`.

    Unknown names raise a ValueError listing the registered samplers; unknown options raise one
    listing the sampler's options.
    """
    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        opts = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"method: option {item!r} in {spec!r} is not of the form key=value")
            opts[key.strip()] = _literal(value)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, opts = spec[0], dict(spec[1])
    else:
        raise ValueError(f"method: expected a sampler name, 'name:key=value', or (name, options), got {spec!r}")
    name = name.strip()
    if name not in available():
        raise ValueError(f"method: unknown sampler {name!r}; known samplers: {', '.join(available())}")
    cls = get_sampler(name)
    unknown = sorted(set(opts) - set(cls.option_names()))
    if unknown:
        raise ValueError(f"method: {name!r} does not accept {', '.join(unknown)}; "
                         f"its options are: {', '.join(cls.option_names()) or '(none)'}")
    cls(**opts)  # let the sampler validate its option values now, before any work starts
    label = name + (f"({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else "")
    return Method(name, tuple(sorted(opts.items())), label)


def parse_methods(specs, *, allow_adaptive: bool = False) -> list[Method]:
    """Parse a non-empty list of method specs; adaptive solvers are refused unless allowed."""
    if isinstance(specs, (str, Method)):
        specs = [specs]
    methods = [parse_method(s) for s in specs]
    if not methods:
        raise ValueError(f"methods: expected at least one sampler; known samplers: {', '.join(available())}")
    if not allow_adaptive:
        for m in methods:
            if getattr(m.instance(), "adaptive", False):  # an instance may decide from its options
                raise ValueError(f"methods: {m.name!r} is adaptive (it chooses its own steps), so a step count "
                                 "does not apply; use a fixed-step sampler here")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods: duplicate entries {labels}")
    return methods


def check_steps(steps, name: str = "steps") -> list[int]:
    """A non-empty, strictly increasing list of positive integers."""
    if isinstance(steps, int):
        steps = [steps]
    try:
        values = list(steps)
    except TypeError:
        raise ValueError(f"{name}: expected a list of positive integers, got {steps!r}") from None
    if not values:
        raise ValueError(f"{name}: expected a non-empty, strictly increasing list of positive integers, got []")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
            raise ValueError(f"{name}: expected positive integers, got {v!r} in {values}")
    values = [int(v) for v in values]
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name}: must be strictly increasing, got {values}")
    return values


def check_grids(names) -> list[str]:
    """Known grid names (``scoresde.grids.available()``), non-empty, no duplicates."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError(f"grids: expected at least one grid; known grids: {', '.join(_grids.available())}")
    for g in names:
        if g not in _grids.GRIDS:
            raise ValueError(f"grid: unknown name {g!r}; known grids: {', '.join(_grids.available())}")
    if len(set(names)) != len(names):
        raise ValueError(f"grids: duplicate entries {names}")
    return names


def check_writable_dir(path) -> Path:
    """Check that ``path`` is (or can be created as) a writable folder, before any work starts."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"--out: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write to {path} ({probe} is not writable)")
    return path


@contextlib.contextmanager
def quiet_brownian():
    """Silence torchsde's "Should have tb<=t1" warnings around direct ``torchsde.sdeint`` calls.

    Its own stepping can land a rounding error past the path's end; the increment is still right.
    (Runs through :func:`scoresde.sample` need no silencing: ``BrownianNoise`` clamps its queries.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
        yield


@contextlib.contextmanager
def staged_output(out):
    """Yield a temporary folder inside ``out``; on success move its files into ``out``, on failure
    remove it (and ``out`` itself if this call created it), so no half-written files remain.

    The list yielded second collects the final paths once the block has finished.
    """
    import shutil
    import tempfile

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    written: list[Path] = []
    try:
        yield tmp, written
        for f in sorted(tmp.iterdir()):
            f.replace(out / f.name)
            written.append(out / f.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


# ----- references -------------------------------------------------------------------------------
@dataclass
class Reference:
    """A reference endpoint at ``t_end`` from ``x_T`` and the estimate of its own error."""

    x: Tensor
    t_start: float
    t_end: float
    error: float
    nfe: int
    kind: str


class _FlowInLambda(torch.nn.Module):
    r"""The PF ODE with the half log-SNR as time: ``dx/dlam = -2 sigma^2 f / g^2 x + sigma^2 s``.

    From ``dlam/dt = f - sigma'/sigma = -g^2 / (2 sigma^2)``. For the VP family ``-2 f / g^2 = 1``, so
    the right side has no jumps even when f does (a piecewise schedule such as
    :class:`~scoresde.sde.DiscreteVPSDE`): an adaptive solver then needs no step at every knot.
    """

    def __init__(self, model: ScoreModel, t_lo: float, t_hi: float):
        super().__init__()
        self.model = model
        self.t_lo, self.t_hi = t_lo, t_hi

    def forward(self, lam: Tensor, x: Tensor) -> Tensor:
        sde = self.model.sde
        # the solver's first-step probe may look past the ends; keep t where the coefficients exist
        t = sde.t_of_lam(lam.to(torch.float64)).clamp(self.t_lo, self.t_hi)
        f, g2, sigma = float(sde.f(t)), float(sde.g2(t)), float(sde.sigma(t))
        return (-2 * sigma**2 * f / g2) * x + sigma**2 * self.model.score(x, t.to(x.dtype))


def reference_pf_ode(model: ScoreModel, x_T: Tensor, t_start: float, t_end: float, *, tol: float = 1e-12,
                     variable: str = "lambda") -> Reference:
    """Probability-flow ODE from ``x_T`` at ``t_start`` to ``t_end`` by dopri5 (rtol = atol = ``tol``).

    ``variable='lambda'`` integrates in the half log-SNR (:class:`_FlowInLambda`; smooth for every
    schedule of the family), ``'t'`` in the SDE's own time (``ProbabilityFlowODE.solve``).
    ``error`` is the mean per-sample Euclidean difference from a second solve at ``tol / 2`` (the
    same statistic as :func:`endpoint_error`): a dopri5 solution's global error shrinks roughly in
    proportion to the tolerance, so this is the order of magnitude of the reference's own error.
    """
    import torchdiffeq

    sde = model.sde
    if variable == "t":
        flow = sde.probability_flow(model.score)

        def solve(tol_):
            return flow.solve(x_T, [t_start, t_end], rtol=tol_, atol=tol_)[-1]
    elif variable == "lambda":
        lams = sde.lam(torch.tensor([t_start, t_end], dtype=torch.float64)).to(x_T.device)
        flow = _FlowInLambda(model, min(t_start, t_end), max(t_start, t_end))

        def solve(tol_):
            with torch.no_grad():
                return torchdiffeq.odeint(flow, x_T, lams.to(x_T.dtype), rtol=tol_, atol=tol_, method="dopri5",
                                          options={"step_t": lams[-1:].to(x_T.dtype)})[-1]
    else:
        raise ValueError(f"variable: expected 'lambda' or 't', got {variable!r}")
    nfe0 = model.nfe
    x = solve(tol)
    nfe = model.nfe - nfe0
    x_half = solve(tol / 2)
    return Reference(x, float(t_start), float(t_end), endpoint_error(x, x_half), nfe,
                     f"pf-ode dopri5 in {variable} tol={tol:g}")


def reference_reverse_sde(model: ScoreModel, x_T: Tensor, t_start: float, t_end: float, brownian,
                          *, steps: int = 2048) -> Reference:
    """The reverse SDE on the Brownian path ``brownian`` by Euler-Maruyama with ``steps`` uniform steps.

    torchsde's ``sdeint`` runs :class:`scoresde.sde.ReverseSDE` in flipped time s = t_start - t.
    ``error`` compares with the same scheme at half as many steps (strong order 1 for additive
    noise, so the fine solution's error is about that difference).
    """
    import torchsde

    sde = model.sde
    rev = sde.reverse_sde(model.score, x_T.shape[1:], t_start=t_start)
    y0 = x_T.reshape(x_T.shape[0], -1)
    span = torch.tensor([0.0, t_start - t_end], dtype=x_T.dtype, device=x_T.device)
    nfe0 = model.nfe

    def solve(n):
        return torchsde.sdeint(rev, y0, span, bm=brownian, method="euler", dt=(t_start - t_end) / n)[-1]

    with torch.no_grad(), quiet_brownian():
        x = solve(steps)
        nfe = model.nfe - nfe0
        x_coarse = solve(steps // 2)
    return Reference(x.reshape(x_T.shape), float(t_start), float(t_end), endpoint_error(x, x_coarse), nfe,
                     f"reverse SDE euler-maruyama {steps} steps")


def endpoint_error(x: Tensor, ref: Tensor) -> float:
    """Mean over the batch of the per-sample Euclidean distance ``|x - ref|``."""
    return float((x - ref).flatten(1).norm(dim=1).mean())


# ----- distances between point clouds --------------------------------------------------------
def w2_exact(x: Tensor, y: Tensor) -> float:
    """Exact W2 between two empirical measures with uniform weights (:func:`scoresde.metrics.wasserstein2`)."""
    from ..metrics import wasserstein2

    return wasserstein2(x.detach().flatten(1).double(), y.detach().flatten(1).double())


def sliced_w2(x: Tensor, y: Tensor, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 along directions fixed by ``seed``, so every comparison uses the same ones."""
    from ..metrics import sliced_wasserstein

    gen = torch.Generator().manual_seed(seed)
    return sliced_wasserstein(x.detach().flatten(1).double().cpu(), y.detach().flatten(1).double().cpu(),
                              n_projections=n_projections, generator=gen)


def distribution_error(samples: Tensor, data: Tensor, mixture=None) -> dict[str, float]:
    """Exact W2 and sliced W2 against ``data``; for a mixture also the mean exact log-density."""
    out = {"w2": w2_exact(samples, data), "sliced_w2": sliced_w2(samples, data)}
    if mixture is not None:
        out["mean_log_density"] = float(mixture.log_prob(samples.detach().double().cpu()).mean())
    return out


# ----- fitted order -----------------------------------------------------------------------------
@dataclass
class OrderFit:
    """Log-log slope of error against steps (``slope``, about ``-order``) and its standard error."""

    slope: float
    stderr: float
    intercept: float
    steps_used: list[int] = field(default_factory=list)

    @property
    def order(self) -> float:
        return -self.slope


def fit_order(steps: Sequence[int], errors: Sequence[float], *, floor: float = 0.0,
              min_points: int = 3, max_points: int = 4) -> OrderFit | None:
    """Fit ``log error = intercept + slope log steps`` over the asymptotic range.

    The asymptotic range is the (up to ``max_points``) largest step counts whose error stays above
    ``10 * floor`` (the reference's own error: near it the differences measure the reference,
    not the sampler). Returns None when fewer than ``min_points`` points qualify.
    """
    from scipy.stats import linregress

    pts = [(n, e) for n, e in zip(steps, errors, strict=False) if math.isfinite(e) and e > max(10 * floor, 1e-300)]
    pts = pts[-max_points:]
    if len(pts) < min_points:
        return None
    ln = [math.log(n) for n, _ in pts]
    le = [math.log(e) for _, e in pts]
    fit = linregress(ln, le)
    return OrderFit(float(fit.slope), float(fit.stderr), float(fit.intercept), [n for n, _ in pts])


# ----- output -----------------------------------------------------------------------------------
def write_csv(rows: Iterable[dict], path) -> Path:
    """Write a list of flat dicts as CSV (columns in first-seen order)."""
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def sde_name(sde: SDE) -> str:
    return type(sde).__name__
