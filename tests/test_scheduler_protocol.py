"""ScoresdeScheduler as diffusers' users drive it: partial runs (img2img, inpainting), diffusers' step
counts and timesteps, the scheduler surface, and tests in the spirit of diffusers' SchedulerCommonTest.

The identity checked for partial runs: a loop begun at call ``t_start * order`` of ``timesteps`` on
``add_noise(x0, noise, timesteps[t_start * order])`` equals ``scoresde.sample`` on the grid's suffix
``schedule.t[t_start:]`` from that same state (the sampler starts there without history on both sides),
in float64 on a tiny UNet2DModel: the same network at the same times with the same updates, so they agree
to rounding (1e-10 relative).
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd

diffusers = pytest.importorskip("diffusers")

from scoresde.interop import ScoresdeScheduler, from_diffusers  # noqa: E402
from scoresde.interop.scheduler import native_timesteps  # noqa: E402
from test_interop_scheduler import rel, tiny_unet, unet  # noqa: E402, F401  (the tiny UNet and its fixture)

RTOL = 1e-10
METHODS = [
    ("ddim", {}),
    ("dpm_solver++", {"order": 2, "variant": "multistep"}),
    ("unipc", {"order": 2}),
    ("heun", {}),
    ("euler_maruyama", {}),
]
IDS = [m for m, _ in METHODS]


def randn(seed, shape=(2, 3, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def img2img(unet, sched, x0, noise, t_start, *, set_begin=True, seed=0, mask=None):
    """diffusers' img2img loop (``get_timesteps(strength)``), or its inpainting loop when a mask is given
    (1 = generate, 0 = keep: the known region is ``add_noise`` of x0 at the next timestep)."""
    begin = t_start * sched.order
    timesteps = sched.timesteps[begin:]
    if set_begin:
        sched.set_begin_index(begin)
    x = sched.add_noise(x0, noise, timesteps[:1])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x, generator=g).prev_sample
            if mask is not None:
                known = x0 if i == len(timesteps) - 1 else sched.add_noise(x0, noise, timesteps[i + 1:i + 2])
                x = (1 - mask) * known + mask * x
    return x


# ----- partial runs ---------------------------------------------------------------------------
@pytest.mark.parametrize("set_begin", [True, False], ids=["set_begin_index", "from-first-timestep"])
@pytest.mark.parametrize("method, options", METHODS, ids=IDS)
def test_img2img_equals_sample_from_that_time(unet, method, options, set_begin):
    sched = ScoresdeScheduler(prediction_type="v_prediction", method=method, options=options)
    sched.set_timesteps(8)
    model, sde = from_diffusers(unet, sched)
    x0, noise, t_start = randn(1).clamp(-1, 1), randn(2), 3
    theirs = img2img(unet, sched, x0, noise, t_start, set_begin=set_begin, seed=7)
    grid = sched.schedule.t[t_start:]
    x_start = sched.add_noise(x0, noise, sched.timesteps[t_start * sched.order:][:1])
    with torch.no_grad():
        res = sd.sample(model, sde, method, x_T=x_start, grid=grid, final_denoise=True,
                        generator=torch.Generator().manual_seed(7), **options)
    assert res.t_start == pytest.approx(float(grid[0]))
    assert rel(res.samples, theirs) < RTOL
    assert rel(theirs, x_start) > 0.05  # the run moved
    assert res.nfe == len(sched.timesteps) - t_start * sched.order  # one listed timestep per call of the suffix


@pytest.mark.parametrize("method, options", METHODS, ids=IDS)
def test_inpainting_keeps_the_known_region_and_an_all_ones_mask_is_img2img(unet, method, options):
    sched = ScoresdeScheduler(prediction_type="v_prediction", method=method, options=options)
    sched.set_timesteps(6)
    x0, noise = randn(3).clamp(-1, 1), randn(4)
    plain = img2img(unet, sched, x0, noise, 2, seed=1)
    sched.set_timesteps(6)
    ones = img2img(unet, sched, x0, noise, 2, seed=1, mask=torch.ones(1, 1, 8, 8, dtype=torch.float64))
    assert rel(ones, plain) < RTOL
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :, 4:] = 1
    sched.set_timesteps(6)
    inpainted = img2img(unet, sched, x0, noise, 2, seed=1, mask=mask)
    assert torch.equal(inpainted[..., :4], x0[..., :4])
    assert rel(inpainted[..., 4:], plain[..., 4:]) > 1e-3  # the blend changed what the run saw


def test_inpainting_with_ddim_equals_one_step_runs_with_the_blend_between(unet):
    """DDIM keeps no history, so the inpainting loop is a chain of one-step scoresde runs with the blend
    applied between them: the pipeline's latents are stepped from where the blend left them."""
    sched = ScoresdeScheduler(prediction_type="v_prediction", method="ddim")
    sched.set_timesteps(6)
    model, sde = from_diffusers(unet, sched)
    x0, noise = randn(5).clamp(-1, 1), randn(6)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    theirs = img2img(unet, sched, x0, noise, 1, mask=mask)
    t = sched.schedule.t
    x = sched.add_noise(x0, noise, sched.timesteps[1:2])
    n = t.numel()  # calls at t[0..n-2] step the grid, the call at t[n-1] is the final denoising
    with torch.no_grad():
        for i in range(1, n):
            if i < n - 1:
                x = sd.sample(model, sde, "ddim", x_T=x, grid=t[i:i + 2]).samples
                known = sched.add_noise(x0, noise, sched.timesteps[i + 1:i + 2])
            else:
                x, known = model.x0(x, t[-1]), x0
            x = (1 - mask) * known + mask * x
    assert rel(x, theirs) < RTOL


def test_a_begin_inside_a_two_call_step_is_refused():
    sched = ScoresdeScheduler(method="heun")
    sched.set_timesteps(5)
    sched.set_begin_index(1)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="begin_index: call 1 falls inside a 2-call step.*calls 0, 2, 4"):
        sched.step(torch.zeros_like(x), sched.timesteps[1], x)
    with pytest.raises(ValueError, match="begin_index: expected an integer >= 0, got -1"):
        sched.set_begin_index(-1)


# ----- diffusers' step counts and timesteps ----------------------------------------------------
NATIVE = {"ddpm": ["DDPMScheduler", "DDIMScheduler"], "multistep": ["DPMSolverMultistepScheduler",
                                                                    "UniPCMultistepScheduler"],
          "euler": ["EulerDiscreteScheduler"]}


@pytest.mark.parametrize("rule, name", [(r, n) for r, ns in NATIVE.items() for n in ns])
@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
def test_timesteps_are_the_native_schedulers(rule, name, spacing, offset, steps):
    native = getattr(diffusers, name)(timestep_spacing=spacing, steps_offset=offset)
    native.set_timesteps(steps)
    ours = ScoresdeScheduler.from_config(native.config, method="ddim")
    assert ours.config.timestep_rule == rule
    ours.set_timesteps(steps)
    expect = native.timesteps.to(torch.float64)
    assert len(ours.timesteps) == steps  # N inference steps, N model calls for a one-call method
    torch.testing.assert_close(ours.timesteps.to(torch.float64), expect, rtol=0, atol=1e-4)
    np.testing.assert_allclose(native_timesteps(1000, steps, spacing, offset, rule), expect.numpy(), atol=1e-4)


def test_the_surface_a_pipeline_touches():
    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = ScoresdeScheduler.from_config(ddpm.config, method="dpm_solver++")
    assert torch.equal(ours.betas, ddpm.betas) and torch.equal(ours.alphas_cumprod, ddpm.alphas_cumprod)
    assert torch.equal(ours.timesteps, ddpm.timesteps)  # before set_timesteps: diffusers' default
    assert ours.step_index is None and ours.begin_index is None
    assert {"DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"} <= \
        {c.__name__ for c in ours.compatibles}
    ours.set_timesteps(4)
    assert ours.sigmas.shape == (5,) and float(ours.sigmas[-1]) == 0.0
    expect = ((1 - ddpm.alphas_cumprod) / ddpm.alphas_cumprod).sqrt()[ours.timesteps]
    torch.testing.assert_close(ours.sigmas[:-1], expect, rtol=1e-5, atol=0)  # sigma/alpha at each call
    x = torch.zeros(1, 3, 4, 4)
    for k, t in enumerate(ours.timesteps):
        ours.step(torch.zeros_like(x), t, x, eta=0.0, use_clipped_model_output=None)
        assert ours.step_index == k + 1
    # custom timesteps and sigmas, as diffusers' schedulers take them
    ours.set_timesteps(timesteps=[900, 500, 100])
    assert ours.timesteps.tolist() == [900, 500, 100] and len(ours.sigmas) == 4
    ours.set_timesteps(sigmas=ours.sigmas.tolist())
    assert ours.timesteps.tolist() == [900, 500, 100]
    with pytest.raises(ValueError, match="set_timesteps: give one of"):
        ours.set_timesteps(3, timesteps=[900, 500, 100])


def test_set_timesteps_is_cheap_and_returns_fresh_tensors():
    sched = ScoresdeScheduler(method="unipc")
    sched.set_timesteps(20)
    first = sched.timesteps
    first[0] = -5  # a pipeline may edit what it was given
    sched.set_timesteps(20)
    assert int(sched.timesteps[0]) == 950


def test_learned_variance_output_is_split_as_diffusers_does():
    sched = ScoresdeScheduler(method="ddim")
    sched.set_timesteps(3)
    x = randn(0, (2, 3, 4, 4))
    out = randn(1, (2, 6, 4, 4))
    a = sched.step(out, sched.timesteps[0], x).prev_sample
    sched.set_timesteps(3)
    b = sched.step(out[:, :3], sched.timesteps[0], x).prev_sample
    assert torch.equal(a, b)


def test_eta_reaches_ddim_and_is_refused_elsewhere():
    sched = ScoresdeScheduler(method="ddim")
    sched.set_timesteps(4)
    x = randn(0, (1, 3, 4, 4))
    out = randn(1, (1, 3, 4, 4))
    det = sched.step(out, sched.timesteps[0], x, eta=0.0).prev_sample
    sched.set_timesteps(4)
    sto = sched.step(out, sched.timesteps[0], x, eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
    assert rel(sto, det) > 1e-3
    other = ScoresdeScheduler(method="unipc")
    other.set_timesteps(4)
    with pytest.raises(ValueError, match="eta: 'unipc' takes no eta"):
        other.step(out, other.timesteps[0], x, eta=0.5)


def test_ddim_pipeline_with_the_scheduler_assigned_after_construction(unet):
    """DDIMPipeline's constructor converts any scheduler to a DDIMScheduler (diffusers' own choice);
    assigned afterwards, ours runs, with the pipeline's eta, and equals scoresde.sample."""
    sched = ScoresdeScheduler(prediction_type="v_prediction", method="ddim")
    pipe = diffusers.DDIMPipeline(unet, sched)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    pipe.scheduler = sched
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(2), num_inference_steps=5, eta=0.0,
                  output_type="pt").images
    model, sde = from_diffusers(unet, sched)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ours = sd.sample(model, sde, "ddim", x_T=x_T, grid=sched.schedule.t, final_denoise=True).samples
    assert rel((ours / 2 + 0.5).clamp(0, 1), images) < 1e-6


# ----- named errors (issue 20) -----------------------------------------------------------------
def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"times: expected strictly decreasing times.*times\[2\] = 0.7"):
        ScoresdeScheduler(times=[1.0, 0.5, 0.7, 0.001])
    rounding = ScoresdeScheduler(grid="uniform", time_rounding="round")
    with pytest.raises(ValueError, match="time_rounding: 'round' maps grid times .* to the same timestep"):
        rounding.set_timesteps(2000)
    with pytest.raises(ValueError, match="num_inference_steps: at most num_train_timesteps = 1000 .* got 2000"):
        ScoresdeScheduler().set_timesteps(2000)
    sched = ScoresdeScheduler()
    x = torch.zeros(4, 3, 4, 4)
    with pytest.raises(ValueError, match="timesteps: 3 timesteps for a batch of 4 samples"):
        sched.add_noise(x, torch.zeros_like(x), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise: expected the shape of original_samples"):
        sched.add_noise(x, torch.zeros(3, 3, 4, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"timesteps: 1000 is not a training timestep; expected values in \[0, 999\]"):
        sched.add_noise(x, torch.zeros_like(x), torch.tensor([1000]))
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(torch.zeros_like(x), 999, x)
    sched.set_timesteps(3)
    with pytest.raises(TypeError, match=r"model_output: expected a torch.Tensor, got numpy.ndarray.*torch.from_numpy"):
        sched.step(np.zeros((4, 3, 4, 4)), sched.timesteps[0], x)
    with pytest.raises(ValueError, match="timesteps: expected strictly decreasing"):
        sched.set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError, match="step: use_clipped_model_output=True is not supported"):
        sched.step(torch.zeros_like(x), sched.timesteps[0], x, use_clipped_model_output=True)


def test_a_churn_before_the_first_call_is_refused():
    """Heun's churn raises the noise before its first call; a pipeline has made that call at its latents."""
    sched = ScoresdeScheduler(method="heun", options={"S_churn": 10.0})
    sched.set_timesteps(5)  # diffusers' timesteps start below T, so the first step churns
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="options: 'heun' raises the noise level before the first model call"):
        sched.step(torch.zeros_like(x), sched.timesteps[0], x, generator=torch.Generator().manual_seed(0))


def test_bfloat16_euler_maruyama_runs():
    sched = ScoresdeScheduler(method="euler_maruyama")
    sched.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4, dtype=torch.bfloat16)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert x.dtype == torch.bfloat16 and bool(torch.isfinite(x).all())


# ----- diffusers' SchedulerCommonTest, in spirit -----------------------------------------------
@pytest.mark.parametrize("method, options", METHODS, ids=IDS)
def test_config_round_trip_and_from_config_across_compatibles(tmp_path, method, options):
    sched = ScoresdeScheduler(method=method, options=options, timestep_spacing="trailing")
    sched.save_config(tmp_path)
    again = ScoresdeScheduler.from_pretrained(tmp_path)
    sched.set_timesteps(5)
    again.set_timesteps(5)
    assert torch.equal(sched.timesteps, again.timesteps)
    for cls in sched.compatibles:
        native = cls.from_config(sched.config)
        back = ScoresdeScheduler.from_config(native.config, method=method, options=options)
        assert torch.equal(back.alphas_cumprod, sched.alphas_cumprod)


@pytest.mark.parametrize("method, options", METHODS, ids=IDS)
def test_step_shapes_and_a_full_loop_with_a_dummy_model(method, options):
    sched = ScoresdeScheduler(method=method, options=options)
    sched.set_timesteps(6)
    x = randn(0, (2, 3, 5, 5))
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps:
        out = 0.3 * x * (t.to(torch.float64) / 1000)  # a dummy model, as diffusers' tests use
        step = sched.step(out, t, x, generator=g)
        assert step.prev_sample.shape == x.shape
        x = step.prev_sample
    assert bool(torch.isfinite(x).all())
    assert sched.step_index == len(sched.timesteps)
    tup = ScoresdeScheduler(method=method, options=options)
    tup.set_timesteps(6)
    assert isinstance(tup.step(torch.zeros_like(x), tup.timesteps[0], x, return_dict=False), tuple)


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 120), spacing=st.sampled_from(["leading", "trailing", "linspace"]),
       rule=st.sampled_from(["ddpm", "multistep"]), method=st.sampled_from(["ddim", "dpm_solver++", "heun"]))
def test_set_timesteps_property(steps, spacing, rule, method):
    sched = ScoresdeScheduler(method=method, timestep_spacing=spacing, timestep_rule=rule)
    sched.set_timesteps(steps)
    ts = sched.timesteps.to(torch.float64)
    distinct = ts.unique()
    assert float(ts.min()) >= 0 and float(ts.max()) <= 999
    assert distinct.numel() == steps  # the native timesteps, each called at least once
    assert torch.equal(distinct.flip(0), torch.from_numpy(native_timesteps(1000, steps, spacing, 0, rule)))
    calls = steps if sched.sampler.calls_per_step == 1 else None
    if calls is not None:
        assert len(ts) == calls and bool((ts[1:] < ts[:-1]).all())


@settings(max_examples=15, deadline=None)
@given(steps=st.integers(1, 12), begin=st.integers(0, 11), method=st.sampled_from(["ddim", "unipc", "dpm_solver++"]))
def test_step_property_any_suffix_runs_to_the_end(steps, begin, method):
    sched = ScoresdeScheduler(method=method)
    sched.set_timesteps(steps)
    begin = min(begin, len(sched.timesteps) - 1)
    sched.set_begin_index(begin)
    x = randn(0, (1, 2, 3, 3))
    for t in sched.timesteps[begin:]:
        x = sched.step(-0.1 * x, t, x).prev_sample
    assert bool(torch.isfinite(x).all()) and sched.step_index == len(sched.timesteps)


def test_bfloat16_sample_through_from_diffusers_runs():
    """In bfloat16, N - 1 = 999 rounds to 1000: the schedule's segment index is taken in float32."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).to(torch.bfloat16)
    model, sde = from_diffusers(unet, diffusers.DDPMScheduler())
    with torch.no_grad():
        res = sd.sample(model, sde, "euler_maruyama", 4, shape=(1, 3, 8, 8), dtype=torch.bfloat16,
                        generator=torch.Generator().manual_seed(0))
    assert res.samples.dtype == torch.bfloat16 and bool(torch.isfinite(res.samples).all())


def test_a_partial_run_decides_length_dependent_defaults_on_the_whole_schedule(unet):
    """DPM-Solver's lower_order_final=None lowers the last order below 15 steps. diffusers decides it on
    len(timesteps) of the whole schedule in an img2img run; so does the scheduler: 20 steps begun at step 8
    is scoresde.sample on the 11-step suffix with lower_order_final=False, not the suffix's default."""
    sched = ScoresdeScheduler(prediction_type="v_prediction", method="dpm_solver++")
    sched.set_timesteps(20)
    model, sde = from_diffusers(unet, sched)
    x0, noise = randn(7).clamp(-1, 1), randn(8)
    theirs = img2img(unet, sched, x0, noise, 8)
    x_start = sched.add_noise(x0, noise, sched.timesteps[8:9])
    grid = sched.schedule.t[8:]
    with torch.no_grad():
        whole = sd.sample(model, sde, "dpm_solver++", x_T=x_start, grid=grid, final_denoise=True,
                          lower_order_final=False).samples
        suffix_default = sd.sample(model, sde, "dpm_solver++", x_T=x_start, grid=grid, final_denoise=True).samples
    assert rel(whole, theirs) < RTOL
    assert rel(suffix_default, theirs) > 1e3 * RTOL


def test_trained_betas_round_trip(tmp_path):
    """diffusers' SchedulerCommonTest.test_trained_betas: a numpy array of betas survives save/load."""
    betas = np.linspace(0.05, 0.3, 10)
    sched = ScoresdeScheduler(num_train_timesteps=10, trained_betas=betas)
    torch.testing.assert_close(sched.betas, torch.tensor(betas, dtype=torch.float32), rtol=0, atol=0)
    sched.save_config(tmp_path)
    again = ScoresdeScheduler.from_pretrained(tmp_path)
    assert torch.equal(again.betas, sched.betas) and torch.equal(again.alphas_cumprod, sched.alphas_cumprod)
    again.set_timesteps(4)
    assert again.timesteps.tolist() == [6, 4, 2, 0]  # 'leading': N // 4 = 2 apart


def test_from_scheduler_with_a_method_takes_any_native_schedulers_timesteps(unet):
    native = diffusers.DDPMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    with pytest.raises(ValueError, match="no scoresde equivalent for 'DDPMScheduler'"):
        ScoresdeScheduler.from_scheduler(native)
    sched = ScoresdeScheduler.from_scheduler(native, method="dpm_solver++", options={"order": 2})
    pipe = diffusers.DDPMPipeline(unet, sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(4), num_inference_steps=7,
                  output_type="pt").images
    native.set_timesteps(7)
    assert torch.equal(sched.timesteps, native.timesteps)  # 7 steps, 7 calls, diffusers' own timesteps
    model, sde = from_diffusers(unet, sched)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        ours = sd.sample(model, sde, "dpm_solver++", x_T=x_T, grid=sched.schedule.t, final_denoise=True, order=2)
    assert rel((ours.samples / 2 + 0.5).clamp(0, 1), images) < 1e-6
