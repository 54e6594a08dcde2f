"""DDIM's x0 clipping equals diffusers' ``DDIMScheduler(clip_sample=True)``, step for step.

Setup as in ``test_diffusers_agreement.py``: a DiscreteVPSDE built from the scheduler's own
``alphas_cumprod`` puts timestep k at t = (k + 1)/N, so the scheduler's ``timesteps`` become our grid.
'trailing' spacing with ``set_alpha_to_one=False`` ends at alphas_cumprod[0], knot 0 (t = 1/N), which
we append, so every scheduler step is a DDIM step of ours (with 'leading' spacing diffusers' last step
goes from knot 0 to knot 0, which is the identity only without clipping). The states are float64 on
both sides, but diffusers forms ``1 - alpha_prod`` and the square roots from its float32 0-d
``alphas_cumprod`` in float32, so its coefficients carry float32 rounding (~6e-8 relative each):
agreement to 1e-6 relative over 8 steps, against a difference > 1e-2 without clipping.
"""
import pytest
import torch

import scoresde as sd
from scoresde import toy

diffusers = pytest.importorskip("diffusers")
N_TRAIN = 1000


def _exact_eps(mix, sde):
    def eps(x, t):
        return -sde.sigma(t.to(torch.float64))[:, None] * mix.score(x, t.to(torch.float64), sde)
    return eps


@pytest.mark.parametrize("clip_range", [0.5, 1.0])
def test_clip_sample_matches_diffusers(clip_range):
    sched = diffusers.DDIMScheduler(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", prediction_type="epsilon", clip_sample=True,
                                    clip_sample_range=clip_range, set_alpha_to_one=False,
                                    timestep_spacing="trailing")
    steps = 8
    sched.set_timesteps(steps)
    sde = sd.DiscreteVPSDE(alphas_cumprod=sched.alphas_cumprod.to(torch.float64))
    mix = toy.gaussian_mixture_2d()
    eps_fn = _exact_eps(mix, sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T
    for ts in sched.timesteps:
        t = torch.full((x.shape[0],), (int(ts) + 1) / N_TRAIN, dtype=torch.float64)
        x = sched.step(eps_fn(x, t), ts, x, eta=0.0).prev_sample
    times = torch.cat([(sched.timesteps.to(torch.float64) + 1) / N_TRAIN,
                       torch.tensor([1.0 / N_TRAIN], dtype=torch.float64)])
    model = sd.ScoreModel(eps_fn, sde, "eps")
    ours = sd.sample(model, sde, "ddim", x_T=x_T, grid=times, clip_sample=True, clip_range=clip_range).samples
    assert x.dtype == torch.float64
    assert float((ours - x).norm() / x.norm()) < 1e-6
    # the clipping bit: without it the result is far away
    plain = sd.sample(model, sde, "ddim", x_T=x_T, grid=times).samples
    assert float((plain - x).norm() / x.norm()) > 1e-2


def test_clip_options_are_checked():
    with pytest.raises(TypeError, match="clip_sample"):  # one policy: a flag that is not True/False is a type error
        sd.samplers.get_sampler("ddim")(clip_sample="yes")
    with pytest.raises(ValueError, match="clip_range"):
        sd.samplers.get_sampler("ddim")(clip_sample=True, clip_range=0.0)
