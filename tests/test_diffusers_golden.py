"""Golden runs: ``ScoresdeScheduler.from_scheduler(native)`` and ``diffusers_equivalent`` reproduce each
native diffusers scheduler, option by option, on a tiny UNet2DModel built from a config (float64).

Both sides call the same network at the same timesteps; the updates are the same algebra in another
parameterisation (log-SNR against sigma), so they agree to the float32 rounding of diffusers' schedule
values (observed <= 1e-6): 1e-5 relative is the bound asked for. Each option is also checked to matter:
the run without it differs from the native run with it by far more than the bound.
"""
import pytest
import torch

import scoresde as sd

diffusers = pytest.importorskip("diffusers")

from scoresde.interop import ScoresdeScheduler, diffusers_equivalent, from_diffusers  # noqa: E402

RTOL = 1e-5
STEPS = 6
BASE = dict(prediction_type="v_prediction")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
CASES = [
    ("DDIMScheduler", {}),  # clip_sample=True, set_alpha_to_one=True: diffusers' defaults
    ("DDIMScheduler", {"clip_sample_range": 0.5}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "clip_sample": False}),
    ("DDIMScheduler", {"steps_offset": 1, "clip_sample": False}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_beta_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}),
    ("DPMSolverMultistepScheduler", {"thresholding": True, "sample_max_value": 0.6}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "timestep_spacing": "trailing",
                                     "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    ("UniPCMultistepScheduler", {"use_exponential_sigmas": True}),
    ("UniPCMultistepScheduler", {"use_beta_sigmas": True}),
    ("UniPCMultistepScheduler", {"thresholding": True, "sample_max_value": 0.6}),
    ("EulerDiscreteScheduler", {}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "interpolation_type": "log_linear"}),
    ("HeunDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
]
IDS = [f"{n.replace('Scheduler', '')}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in CASES]


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).double().eval()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _float64(sched):
    # diffusers keeps its schedule in float32 tensors; held in float64 (the same values), its arithmetic
    # runs in float64 as ours does, so that the two runs are compared beyond float32 rounding
    for name, value in list(vars(sched).items()):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            setattr(sched, name, value.to(torch.float64))


def run(unet, sched, z, steps=STEPS):
    """A pipeline's loop from the standard normal z (times init_noise_sigma), in float64."""
    _float64(sched)
    sched.set_timesteps(steps)
    _float64(sched)
    x = z * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_from_scheduler_and_diffusers_equivalent_reproduce_the_native_run(unet, name, options):
    native = getattr(diffusers, name)(**BASE, **options)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs = run(unet, native, z)
    ours_sched = ScoresdeScheduler.from_scheduler(native)
    ours = run(unet, ours_sched, z)
    assert rel(ours, theirs) < RTOL
    assert rel(theirs, z) > 0.1  # the run moved
    if options:  # the option matters: the native run without it is another run
        plain = getattr(diffusers, name)(**BASE)
        if {**plain.config, "_use_default_values": None} != {**native.config, "_use_default_values": None}:
            assert rel(run(unet, plain, z), theirs) > 100 * RTOL
    # the same through scoresde.sample: where the network is called at the rounded times of the noise levels
    # the model rounds too; where diffusers calls it elsewhere, diffusers_equivalent refuses and says why
    rounding = "round" if any(options.get(k) for k in SIGMA_OPTIONS) else None
    try:
        kw = diffusers_equivalent(native, STEPS, time_rounding=rounding)
    except ValueError as err:
        assert "from_scheduler" in str(err)
        return
    model, sde = from_diffusers(unet, native, time_rounding=rounding)
    method = kw.pop("method")
    with torch.no_grad():
        direct = sd.sample(model, sde, method, x_T=z * ours_sched.init_noise_sigma, **kw).samples
    assert rel(direct, theirs) < RTOL


@pytest.mark.parametrize("name, options, match", [
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas: .* time_rounding='round'"),
    ("DDIMScheduler", {"thresholding": True}, "thresholding: DDIMScheduler with thresholding=True"),
    ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}, "calls the network at timesteps .*from_scheduler"),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas: EulerDiscreteScheduler calls"),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "interpolation_type: EulerDiscreteScheduler calls"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
     "final_sigmas_type: DPMSolverMultistepScheduler with use_karras_sigmas"),
    ("DDIMScheduler", {"set_alpha_to_one": False}, "clip_sample: DDIMScheduler with set_alpha_to_one=False"),
    ("DPMSolverMultistepScheduler", {"euler_at_final": True}, "euler_at_final"),
])
def test_what_cannot_be_reproduced_is_refused_by_name(name, options, match):
    with pytest.raises(ValueError, match=match):
        diffusers_equivalent(getattr(diffusers, name)(**options), STEPS)


@pytest.mark.parametrize("name, options", [("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
                                           ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"})])
def test_diffusers_grid_follows_the_native_sigmas(name, options):
    """Noise levels between the training knots: the grid's sigma/alpha are diffusers' sigmas, and its
    ``timesteps`` are the network times diffusers calls there."""
    from scoresde.interop import diffusers_grid

    native = getattr(diffusers, name)(**options)
    g = diffusers_grid(native, STEPS)
    native.set_timesteps(STEPS)
    sde = sd.DiscreteVPSDE(alphas_cumprod=native.alphas_cumprod.to(torch.float64))
    alpha, sigma = sde.alpha_sigma(g.times)
    # to float32 rounding: sigma_max rounded up lies 1e-9 past T, where the grid starts at T itself
    torch.testing.assert_close(sigma / alpha, native.sigmas[:-1].to(torch.float64), rtol=1e-7, atol=0)
    assert g.timesteps.tolist() == native.timesteps.to(torch.float64).tolist() and g.final_denoise
