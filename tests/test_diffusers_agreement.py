"""Agreement with diffusers' schedulers (the public reference implementations), step for step.

Setup. A :class:`~scoresde.sde.DiscreteVPSDE` built from the scheduler's own ``alphas_cumprod``
(float32 values, held in float64) puts knot ``k`` at ``t = (k + 1)/N`` with
``alpha(t)^2 = alphas_cumprod[k]`` exactly, so the scheduler's integer ``timesteps`` become our user
grid ``times = (timesteps + 1)/N``, and both sides call the same exact mixture noise prediction at the
same noise levels. We integrate in float64; the schedulers in float32, so agreement is to float32
accumulation (observed ~1e-6), checked at the 1e-4 relative level the issue asks for.

The final step. After its last listed timestep every scheduler takes one more step, to a noise level
that is not a listed timestep:

* to ``alpha = 1, sigma = 0`` (DDIM's ``final_alpha_cumprod`` with ``set_alpha_to_one=True``;
  DPM-Solver/UniPC's ``final_sigmas_type='zero'``). A first-order step of any of these methods to
  sigma = 0 returns the data prediction x0(x, t_last): that is our ``final_denoise=True`` (Tweedie's
  denoiser at ``times[-1]``). DPMSolverMultistep always takes that last step at first order when the
  final sigma is zero, and UniPC at ``min(order, steps left) = 1`` with ``lower_order_final`` (the
  default), so ours runs with ``lower_order_final=False`` on the listed grid: the last *listed* step
  is at full order on both sides. UniPC's corrector at the last listed time is wasted in diffusers
  (the final step uses the model output at the uncorrected state and lands on it exactly), which is
  ours with ``final_corrector=False``.
* to ``alphas_cumprod[0]`` (DDIM's ``set_alpha_to_one=False``; ``final_sigmas_type='sigma_min'``):
  that is knot 0, ``t = 1/N``, appended to our grid (if the grid already ends there, as DDIM's
  'leading' spacing does, diffusers' extra step is the identity and ours has nothing to add). With
  fewer than 15 steps DPMSolverMultistep lowers that last step to first order, as UniPC always does
  with ``lower_order_final``; ours then runs with ``lower_order_final=True``, which caps the order of
  the last step the same way.

DDIM with ``timestep_spacing='linspace'`` is not compared: DDIMScheduler steps from ``t`` to
``t - N // steps``, which is not the next listed timestep under that spacing (it integrates a grid
that differs from its own ``timesteps``).
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 1000
RTOL = 1e-4  # float32 schedulers vs our float64: observed ~1e-6 at these step counts
# 10 steps: below diffusers' 15-step threshold for lowering the last order; 25: above it (slow: budget)
STEPS = [10, pytest.param(25, marks=pytest.mark.slow)]


def _scheduler(cls_name, **config):
    cls = getattr(diffusers, cls_name)
    return cls(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
               prediction_type="epsilon", **config)


@pytest.fixture(scope="module")
def mix():
    return toy.gaussian_mixture_2d()


def _exact_eps(mix, sde):
    def eps(x, t):
        t = t.to(torch.float64)
        sigma = sde.sigma(t)[:, None]
        return (-sigma * mix.score(x.to(torch.float64), t, sde)).to(x.dtype)
    return eps


def _run_diffusers(sched, steps, x_T, eps_fn):
    sched.set_timesteps(steps)
    x = x_T.to(torch.float32)
    for ts in sched.timesteps:
        t = torch.full((x.shape[0],), (int(ts) + 1) / N_TRAIN, dtype=torch.float64)
        x = sched.step(eps_fn(x, t), ts, x).prev_sample
    return sched.timesteps.clone(), x


def _our_grid(timesteps, final: str):
    """Our grid and final-step flag for a scheduler's timesteps and final noise level (module docstring)."""
    times = (timesteps.to(torch.float64) + 1) / N_TRAIN
    if final == "zero":
        return times, True
    assert final == "alpha0"
    if float(times[-1]) > 1.5 / N_TRAIN:
        times = torch.cat([times, torch.tensor([1.0 / N_TRAIN], dtype=torch.float64)])
    return times, False


def _compare(mix, sched, steps, method, final, **options):
    sde = sd.DiscreteVPSDE(alphas_cumprod=sched.alphas_cumprod.to(torch.float64))
    eps_fn = _exact_eps(mix, sde)
    g = torch.Generator().manual_seed(steps)
    x_T = torch.randn(256, 2, generator=g, dtype=torch.float64)
    timesteps, theirs = _run_diffusers(sched, steps, x_T, eps_fn)
    times, final_denoise = _our_grid(timesteps, final)
    model = sd.ScoreModel(eps_fn, sde, "eps")
    ours = sd.sample(model, sde, method, x_T=x_T, grid=times, final_denoise=final_denoise, **options).samples
    rel = float((ours - theirs.to(torch.float64)).norm() / theirs.to(torch.float64).norm())
    # the comparison means something only if the runs moved: the result differs from x_T by O(1)
    assert float((ours - x_T).norm() / x_T.norm()) > 0.1
    return rel


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("alpha_to_one", [True, False])
@pytest.mark.parametrize("steps", STEPS)
def test_ddim(mix, spacing, alpha_to_one, steps):
    sched = _scheduler("DDIMScheduler", clip_sample=False, set_alpha_to_one=alpha_to_one, timestep_spacing=spacing)
    rel = _compare(mix, sched, steps, "ddim", "zero" if alpha_to_one else "alpha0", eta=0.0)
    assert rel < RTOL, rel


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
def test_dpm_solver_pp_2m(mix, spacing, final, steps):
    sched = _scheduler("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
                       solver_type="midpoint", lower_order_final=True, final_sigmas_type=final,
                       timestep_spacing=spacing)
    # diffusers lowers the last step (to sigma_min) only below 15 steps; to zero, always (docstring)
    lower = final == "sigma_min" and steps < 15
    rel = _compare(mix, sched, steps, "dpm_solver++", "zero" if final == "zero" else "alpha0", order=2,
                   variant="multistep", solver_type="dpmsolver", lower_order_final=lower)
    assert rel < RTOL, rel


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
def test_unipc_bh2(mix, spacing, final, steps):
    sched = _scheduler("UniPCMultistepScheduler", solver_order=2, solver_type="bh2", predict_x0=True,
                       lower_order_final=True, final_sigmas_type=final, timestep_spacing=spacing)
    rel = _compare(mix, sched, steps, "unipc", "zero" if final == "zero" else "alpha0", order=2, variant="bh2",
                   prediction="data", corrector=True, final_corrector=False, lower_order_final=final == "sigma_min")
    assert rel < RTOL, rel


def test_a_different_method_does_not_agree(mix):
    """The comparison can fail: DPM-Solver++ 2M against diffusers' DDIM differs far beyond RTOL."""
    sched = _scheduler("DDIMScheduler", clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    rel = _compare(mix, sched, 10, "dpm_solver++", "zero", order=2, lower_order_final=False)
    assert rel > 100 * RTOL and math.isfinite(rel)



@pytest.mark.parametrize("max_value", [0.5, 1.5])
def test_dpm_solver_pp_thresholding(mix, max_value):
    """Dynamic thresholding of the data prediction as diffusers applies it, ``sample_max_value``
    below 1 included (then s = max_value: a clip rescaled to [-1, 1]). The state is (B, 2, 1):
    diffusers thresholds (batch, channels, *rest) tensors only."""
    def run(threshold: bool):
        sched = _scheduler("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
                           solver_type="midpoint", lower_order_final=True, final_sigmas_type="sigma_min",
                           thresholding=threshold, dynamic_thresholding_ratio=0.995, sample_max_value=max_value)
        sde = sd.DiscreteVPSDE(alphas_cumprod=sched.alphas_cumprod.to(torch.float64))
        eps_2d = _exact_eps(mix, sde)
        eps_fn = lambda x, t: eps_2d(x[..., 0], t)[..., None]  # noqa: E731
        x_T = torch.randn(256, 2, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        timesteps, theirs = _run_diffusers(sched, 10, x_T, eps_fn)
        times, _ = _our_grid(timesteps, "alpha0")
        ours = sd.sample(sd.ScoreModel(eps_fn, sde, "eps"), sde, "dpm_solver++", x_T=x_T, grid=times, order=2,
                         lower_order_final=True, thresholding=True, percentile=0.995, max_value=max_value).samples
        return float((ours - theirs.double()).norm() / theirs.double().norm())

    assert run(True) < RTOL
    assert run(False) > 100 * RTOL  # thresholding changed the run: the comparison can fail
