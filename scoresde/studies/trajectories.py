r"""Trajectories on 2D data: the same x_T pushed through the reverse SDE, the PF ODE, DDIM and DPM-Solver++.

All paths start from the same points at ``T``:

* **reverse SDE** (Anderson 1982; Song et al. 2021, eq. 6): ``dx = [f x - g^2 s] dt + g dw_bar``,
  integrated by torchsde on a fine grid, so its paths are the (rough) continuous-time ones;
* **PF ODE** (Song et al. 2021, eq. 13): ``dx/dt = f x - g^2 s / 2``, by dopri5 with dense output;
* **DDIM** and **DPM-Solver++** (when registered) with a few steps: the corners they cut show up
  against the smooth ODE path they discretise.

The exact density ``p_t`` and score of the mixture are evaluated on a mesh at a few snapshot times
and at every animation frame, so the figures need no further computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..grids import uniform_logsnr
from ..samplers import available, brownian_path, sample
from ..sde import SDE
from .references import quiet_brownian

__all__ = ["Trajectories", "trajectories", "state_at"]


@dataclass
class Trajectories:
    """Paths per method (times ``(L,)`` float64, states ``(L, k, 2)``), density snapshots and samples."""

    paths: dict[str, tuple[Tensor, Tensor]]
    snapshot_times: list[float]
    mesh: tuple[Tensor, Tensor]
    log_density: Tensor            # (len(snapshot_times), M, M)
    score_mesh: tuple[Tensor, Tensor]
    scores: Tensor                 # (len(snapshot_times), m, m, 2)
    frame_times: list[float]
    frame_log_density: Tensor      # (frames, M, M)
    samples: dict[str, Tensor] = field(default_factory=dict)
    data: Tensor | None = None
    config: dict = field(default_factory=dict)

    def state_at(self, label: str, t: float) -> Tensor:
        """The states of ``label``'s paths at time ``t`` (linear interpolation, see :func:`state_at`)."""
        times, states = self.paths[label]
        return state_at(times, states, t)

    def rows(self) -> list[dict]:
        """Long-format rows (method, path, step, t, x, y) for the CSV beside the figure."""
        out = []
        for label, (times, states) in self.paths.items():
            for j in range(states.shape[1]):
                for i in range(states.shape[0]):
                    out.append({"method": label, "path": j, "step": i, "t": float(times[i]),
                                "x": float(states[i, j, 0]), "y": float(states[i, j, 1])})
        return out


def state_at(times: Tensor, states: Tensor, t: float) -> Tensor:
    """Linear interpolation in t of a path recorded at decreasing ``times`` (clamped at the ends)."""
    times = times.to(torch.float64)
    if t >= float(times[0]):
        return states[0]
    if t <= float(times[-1]):
        return states[-1]
    i = int(torch.searchsorted(-times, torch.tensor(-t, dtype=torch.float64))) - 1
    i = max(0, min(i, len(times) - 2))
    w = (float(times[i]) - t) / (float(times[i] - times[i + 1]))
    return (1 - w) * states[i] + w * states[i + 1]


def _log_density_on_mesh(mixture, sde: SDE, times, xs: Tensor, ys: Tensor) -> Tensor:
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    return torch.stack([mixture.log_prob_t(pts, float(t), sde).reshape(X.shape) for t in times])


def trajectories(mixture, sde: SDE, *, n_paths: int = 12, steps: int = 10, sde_steps: int = 250,
                 snapshot_times=None, n_frames: int = 40, n_samples: int = 2000, sample_method: str | None = None,
                 extent: float = 3.5, mesh: int = 200, score_mesh: int = 15, seed: int = 0) -> Trajectories:
    """Compute everything the trajectory figures show, for a 2D mixture under ``sde``.

    Args:
        n_paths: number of common starting points x_T.
        steps: grid steps of DDIM and DPM-Solver++ (log-SNR grid).
        sde_steps: Euler-Maruyama steps of the reverse SDE paths (torchsde).
        snapshot_times: times of the p_t / score snapshots (default: 5 times uniform in log-SNR).
        n_frames: animation frames (uniform in log-SNR from T to t_min).
        n_samples: size of the sample-vs-data scatter (drawn with ``sample_method``, default
            DPM-Solver++ if registered, else DDIM, with ``steps`` steps).
    """
    import torchsde

    if mixture.dim != 2:
        raise ValueError(f"mixture: trajectories are drawn in 2D, got a mixture of dimension {mixture.dim}")
    model = mixture.model(sde)
    T, t_min = float(sde.T), float(sde.t_min)
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n_paths, 2), generator=gen, dtype=torch.float64)
    paths: dict[str, tuple[Tensor, Tensor]] = {}

    # reverse SDE on a fine uniform grid (flipped time s = T - t for torchsde)
    s_grid = torch.linspace(0, T - t_min, sde_steps + 1, dtype=torch.float64)
    bm = brownian_path(torch.tensor([T, t_min]), x_T.shape, seed=seed + 1)
    with torch.no_grad(), quiet_brownian():
        ys = torchsde.sdeint(sde.reverse_sde(model.score, (2,)), x_T, s_grid, bm=bm, method="euler",
                             dt=float(s_grid[1]))
    paths["reverse SDE"] = (T - s_grid, ys)

    # PF ODE with dense output on a log-SNR grid (smooth curves where the path bends)
    ode_times = uniform_logsnr(sde, 199, t_min, T)
    with torch.no_grad():
        paths["PF ODE"] = (ode_times, sde.probability_flow(model.score).solve(x_T, ode_times, rtol=1e-8, atol=1e-8))

    for name, label in (("ddim", f"DDIM, {steps} steps"), ("dpm_solver++", f"DPM-Solver++, {steps} steps")):
        if name in available():
            res = sample(model, sde, name, steps, x_T=x_T, return_trajectory=True)
            paths[label] = (res.times, res.trajectory)

    if snapshot_times is None:
        snapshot_times = uniform_logsnr(sde, 4, t_min, T).tolist()
    snapshot_times = [float(t) for t in snapshot_times]
    sde.validate_time(torch.tensor(snapshot_times, dtype=torch.float64), "snapshot_times")
    xs = torch.linspace(-extent, extent, mesh, dtype=torch.float64)
    log_density = _log_density_on_mesh(mixture, sde, snapshot_times, xs, xs)
    qs = torch.linspace(-extent, extent, score_mesh, dtype=torch.float64)
    QX, QY = torch.meshgrid(qs, qs, indexing="xy")
    qpts = torch.stack([QX.flatten(), QY.flatten()], 1)
    scores = torch.stack([mixture.score(qpts, t, sde).reshape(*QX.shape, 2) for t in snapshot_times])

    frame_times = uniform_logsnr(sde, n_frames - 1, t_min, T).tolist()
    frame_ld = _log_density_on_mesh(mixture, sde, frame_times, xs, xs)

    method = sample_method or ("dpm_solver++" if "dpm_solver++" in available() else "ddim")
    big = sample(model, sde, method, steps, shape=(n_samples, 2), generator=gen, dtype=torch.float64)
    data = mixture.sample(n_samples, generator=gen, dtype=torch.float64)
    samples = {f"{method}, {steps} steps (NFE {big.nfe})": big.samples}
    config = {"sde": repr(sde), "T": T, "t_min": t_min, "steps": steps, "sde_steps": sde_steps, "seed": seed,
              "extent": extent}
    return Trajectories(paths, snapshot_times, (xs, xs), log_density, (qs, qs), scores, frame_times, frame_ld,
                        samples, data, config)
