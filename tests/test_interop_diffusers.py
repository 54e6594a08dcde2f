"""diffusers models in scoresde: from_diffusers, diffusers_grid / diffusers_equivalent, and bad input.

A tiny random float64 ``UNet2DModel`` (about 40k parameters, 8x8 RGB) is saved with its scheduler to
a temporary folder (nothing from the hub). The agreement tests run diffusers' own schedulers on it
with the loop ``DDPMPipeline`` uses (``scale_model_input``, the network, ``step``) and scoresde on the
same network and x_T with the grid and options of :func:`diffusers_equivalent`. Both sides call the
same float64 network at the same integer timesteps; diffusers keeps its schedule coefficients in
float32 (~6e-8 relative), which the run carries into the result at that level times the network's
sensitivity: 1e-5 relative leaves two orders of margin.
"""
import json

import pytest
import torch

import scoresde as sd

diffusers = pytest.importorskip("diffusers")

from scoresde.interop import (  # noqa: E402
    diffusers_alphas_cumprod,
    diffusers_equivalent,
    diffusers_grid,
    from_diffusers,
)

RTOL = 1e-5
STEPS = 8
PREDICTIONS = ["epsilon", "v_prediction"]


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
               norm_num_groups=4)
    cfg.update(kw)
    return diffusers.UNet2DModel(**cfg).double().eval()


@pytest.fixture(scope="module", params=PREDICTIONS)
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ddpm_{request.param}")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=request.param)
    diffusers.DDPMPipeline(tiny_unet(), sched).save_pretrained(path)
    return path, request.param


@pytest.fixture(scope="module")
def loaded(folder):
    path, prediction = folder
    pipe = diffusers.DDPMPipeline.from_pretrained(path, local_files_only=True).to(torch.float64)
    model, sde = from_diffusers(pipe)
    return pipe, model, sde, prediction


def x_T(n=2, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----- the model and its schedule ---------------------------------------------------------------
@pytest.mark.parametrize("config", [dict(beta_schedule="linear"),
                                    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                    dict(beta_schedule="squaredcos_cap_v2"),
                                    dict(trained_betas=torch.linspace(1e-4, 0.03, 500).tolist(), num_train_timesteps=500)])
def test_schedule_is_diffusers_own(config):
    """alphas_cumprod equals the scheduler's own float32 values exactly, and the SDE puts them at its knots."""
    sched = diffusers.DDIMScheduler(**config)
    ac = diffusers_alphas_cumprod(sched)
    assert torch.equal(ac, sched.alphas_cumprod.to(torch.float64))
    sde = sd.interop.diffusers_sde(sched.config)
    k = torch.tensor([0, 1, 17, sde.N - 1])
    alpha = sde.alpha((k + 1).to(torch.float64) / sde.N)
    torch.testing.assert_close(alpha**2, ac[k], rtol=1e-13, atol=0)


def test_model_is_the_network(loaded):
    """At a knot t = (k + 1)/N the wrapped model returns the network's output at timestep k, converted."""
    pipe, model, sde, prediction = loaded
    x, k = x_T(), 417
    t = (k + 1) / sde.N
    with torch.no_grad():
        raw = pipe.unet(x, k).sample
        out = model.predict(x, t)
        torch.testing.assert_close(out, raw, rtol=1e-12, atol=1e-12)
        view = model.eps(x, t) if prediction == "epsilon" else model.v(x, t)
        torch.testing.assert_close(view, raw, rtol=1e-10, atol=1e-12)
    assert model.parameterization == {"epsilon": "eps", "v_prediction": "v"}[prediction]


def test_folder_pipeline_and_module_give_one_model(folder, loaded):
    path, _ = folder
    pipe, model, _, _ = loaded
    m_folder, _ = from_diffusers(path)
    m_module, _ = from_diffusers(pipe.unet, scheduler=pipe.scheduler)
    m_config, _ = from_diffusers(pipe.unet, scheduler=str(path / "scheduler"))
    x = x_T()
    with torch.no_grad():
        ref = model.x0(x, 0.3)
        for m in (m_module, m_config):
            assert torch.equal(m.x0(x, 0.3), ref)
        # the folder loads the saved float32 weights of the float64 net: equal to float32 rounding
        torch.testing.assert_close(m_folder.x0(x, 0.3), ref, rtol=1e-4, atol=1e-4)


# ----- reproducing diffusers' schedulers ----------------------------------------------------------
def run_diffusers(sched, unet, z, steps):
    """DDPMPipeline's loop on the VP-frame start z (Euler and Heun start at z / alpha(t_0): their frame)."""
    sched.set_timesteps(steps)
    x = z
    if type(sched).__name__ in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
        x = z * float((sched.sigmas[0] ** 2 + 1) ** 0.5)  # z / alpha(t_0), alpha = 1 / sqrt(1 + sigma^2)
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x


CASES = [
    ("DDIMScheduler", dict(timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False)),
    ("DDIMScheduler", dict(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)),
    ("DDIMScheduler", dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False)),
    ("DPMSolverMultistepScheduler", dict(timestep_spacing="trailing", solver_order=2)),
    ("DPMSolverMultistepScheduler", dict(timestep_spacing="leading", solver_order=2, final_sigmas_type="sigma_min")),
    ("UniPCMultistepScheduler", dict(timestep_spacing="trailing", solver_order=2)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing")),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading")),
    ("HeunDiscreteScheduler", dict(timestep_spacing="leading", clip_sample=False)),
]


@pytest.mark.parametrize("name, config", CASES, ids=[f"{n}-{c['timestep_spacing']}-{c.get('steps', STEPS)}" for n, c in CASES])
def test_scoresde_reproduces_diffusers(loaded, name, config):
    pipe, model, sde, prediction = loaded
    config = dict(config)
    steps = config.pop("steps", STEPS)
    sched = getattr(diffusers, name).from_config(pipe.scheduler.config, **config)
    z = x_T(seed=1)
    theirs = run_diffusers(sched, pipe.unet, z, steps).to(torch.float64)
    kw = diffusers_equivalent(sched, steps)
    method = kw.pop("method")
    with torch.no_grad():
        ours = sd.sample(model, sde, method, x_T=z, **kw).samples
    assert rel(ours, theirs) < RTOL, (name, rel(ours, theirs))
    assert rel(ours, z) > 0.1  # the run moved


def test_a_different_scheduler_does_not_agree(loaded):
    """The comparison can fail: scoresde's DDIM against diffusers' DPM-Solver++ 2M differs far beyond RTOL."""
    pipe, model, sde, _ = loaded
    sched = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    z = x_T(seed=1)
    theirs = run_diffusers(sched, pipe.unet, z, STEPS).to(torch.float64)
    g = diffusers_grid(sched, STEPS)
    with torch.no_grad():
        ours = sd.sample(model, sde, "ddim", x_T=z, **g.kwargs()).samples
    assert rel(ours, theirs) > 100 * RTOL


@pytest.mark.parametrize("name, spacing, steps, expect", [
    ("DDIMScheduler", "leading", 10, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
    ("DDIMScheduler", "trailing", 4, [999, 749, 499, 249]),
    ("DPMSolverMultistepScheduler", "leading", 4, [800, 600, 400, 200]),
    ("HeunDiscreteScheduler", "trailing", 4, [999, 749, 499, 249]),
])
def test_diffusers_grid(name, spacing, steps, expect):
    """The grid is (timesteps + 1)/N of diffusers' rules (values worked out from their formulas:
    'leading' N//steps apart from 0 for DDIM, N//(steps+1) for DPM-Solver; 'trailing' from N - 1);
    Heun's repeated timesteps count once."""
    g = diffusers_grid(getattr(diffusers, name)(), steps, spacing=spacing, final="zero")
    assert g.timesteps.tolist() == expect
    torch.testing.assert_close(g.times, (torch.tensor(expect, dtype=torch.float64) + 1) / 1000, rtol=0, atol=0)
    assert g.final_denoise and g.kwargs()["final_denoise"]
    # DDIM steps from k to k - N // steps: with 3 'trailing' steps [999, 666, 332] it steps 666 -> 333,
    # a timestep it does not list (and 'linspace' does so at any step count)
    with pytest.raises(ValueError, match=r"spacing: DDIMScheduler with timestep_spacing='trailing'.*\[999, 666, 332\]"):
        diffusers_grid(diffusers.DDIMScheduler(), 3, spacing="trailing", final="zero")
    with pytest.raises(ValueError, match="spacing: DDIMScheduler with timestep_spacing='linspace'"):
        diffusers_grid(diffusers.DDIMScheduler(), 7, spacing="linspace")
    low = diffusers_grid({"_class_name": "DDIMScheduler"}, 4, spacing="trailing", final="sigma_min")
    assert not low.final_denoise and float(low.times[-1]) == 1 / 1000 and len(low.times) == 5


# ----- conditioning, guidance, rounding -----------------------------------------------------------
def test_class_labels_and_guidance():
    unet = tiny_unet(num_class_embeds=3)
    sched = diffusers.DDPMScheduler()
    x, t = x_T(), 0.4
    k = 1000 * t - 1
    with torch.no_grad():
        cond = unet(x, torch.full((2,), k, dtype=torch.float64), class_labels=torch.tensor([1, 1])).sample
        null = unet(x, torch.full((2,), k, dtype=torch.float64), class_labels=torch.tensor([2, 2])).sample
        plain, _ = from_diffusers(unet, sched, class_labels=1)
        torch.testing.assert_close(plain.predict(x, t), cond, rtol=1e-10, atol=1e-12)
        guided, _ = from_diffusers(unet, sched, class_labels=1, guidance_scale=3.0, null_class_label=2)
        torch.testing.assert_close(guided.predict(x, t), null + 3.0 * (cond - null), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(cond, null)  # the label changes the output, so the test can fail


def test_encoder_hidden_states_and_guidance():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=6, norm_num_groups=4, attention_head_dim=2).double().eval()
    sched = diffusers.DDPMScheduler()
    x, t = x_T(), 0.6
    ts = torch.full((2,), 1000 * t - 1, dtype=torch.float64)
    prompt = torch.randn(1, 5, 6, dtype=torch.float64)
    negative = torch.randn(1, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        cond = unet(x, ts, encoder_hidden_states=prompt.expand(2, 5, 6)).sample
        null = unet(x, ts, encoder_hidden_states=negative.expand(2, 5, 6)).sample
        plain, _ = from_diffusers(unet, sched, encoder_hidden_states=prompt)
        torch.testing.assert_close(plain.predict(x, t), cond, rtol=1e-10, atol=1e-12)
        guided, _ = from_diffusers(unet, sched, encoder_hidden_states=prompt, guidance_scale=5.0,
                                   negative_encoder_hidden_states=negative)
        torch.testing.assert_close(guided.predict(x, t), null + 5.0 * (cond - null), rtol=1e-9, atol=1e-11)
    assert not torch.allclose(cond, null)


class Recorder(torch.nn.Module):
    """A network that records the timesteps it is called with and predicts zero noise."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.detach().clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("rounding", [None, "round", "floor"])
def test_time_rounding(rounding):
    net = Recorder()
    model, sde = from_diffusers(net, diffusers.DDPMScheduler(), time_rounding=rounding)
    sd.sample(model, sde, "ddim", 7, x_T=torch.zeros(1, 2))
    seen = torch.cat(net.seen).double()
    exact = sde.discrete_time(sd.grids.make_grid("logsnr", sde, 7)[:-1].to(torch.float32)).double()
    if rounding is None:
        torch.testing.assert_close(seen, exact, rtol=0, atol=1e-3)
        assert (seen != seen.round()).any()  # scoresde's grid is fractional: the option matters
    else:
        assert torch.equal(seen, seen.round())
        expect = exact.round() if rounding == "round" else torch.floor(exact)
        assert torch.equal(seen, expect)
    # at a knot (k + 1)/N in float32, floor returns k (not k - 1 from rounding of t)
    net.seen.clear()
    knots = torch.tensor([999.0, 537.0, 3.0])
    model.predict(torch.zeros(3, 2), (knots + 1) / 1000)
    if rounding is not None:
        assert net.seen[0].tolist() == knots.tolist()


# ----- bad input ------------------------------------------------------------------------------
def test_bad_schedule_and_prediction_names():
    unet = tiny_unet()
    with pytest.raises(ValueError, match=r"beta_schedule: unsupported 'sigmoid'.*linear, scaled_linear, squaredcos_cap_v2"):
        from_diffusers(unet, {"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match=r"prediction_type: unsupported 'flow'.*epsilon, v_prediction, sample"):
        from_diffusers(unet, {"prediction_type": "flow"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        from_diffusers(unet, {"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="time_rounding: unknown 'ceil'"):
        from_diffusers(unet, {}, time_rounding="ceil")


def test_folders_missing_a_model_or_a_scheduler(tmp_path):
    with pytest.raises(ValueError, match="no model in .*model_index.json"):
        from_diffusers(tmp_path)
    tiny_unet().save_pretrained(tmp_path / "unet_only")
    with pytest.raises(ValueError, match="scheduler: a bare network needs its training schedule"):
        from_diffusers(tmp_path / "unet_only")
    with pytest.raises(ValueError, match="is not a folder"):
        from_diffusers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no scheduler config at"):
        from_diffusers(tiny_unet(), scheduler=str(tmp_path))
    # a model folder with its scheduler config beside it loads
    diffusers.DDPMScheduler().save_config(tmp_path / "unet_only")
    model, sde = from_diffusers(tmp_path / "unet_only")
    assert sde.N == 1000 and json.loads((tmp_path / "unet_only" / "config.json").read_text())["_class_name"]


def test_non_tensor_output_is_named():
    class TupleNet(torch.nn.Module):
        def forward(self, x, t):
            return (x,)
    model, _ = from_diffusers(TupleNet(), diffusers.DDPMScheduler())
    with pytest.raises(TypeError, match=r"returned tuple, not a tensor.*\.sample"):
        model.predict(torch.zeros(1, 2), 0.5)


def test_unsupported_scheduler_options_are_named():
    with pytest.raises(ValueError, match="clip_sample: DDIMScheduler with set_alpha_to_one=False"):
        diffusers_equivalent(diffusers.DDIMScheduler(clip_sample=True, set_alpha_to_one=False), 5)
    with pytest.raises(ValueError, match="no scoresde equivalent for 'PNDMScheduler'"):
        diffusers_equivalent(diffusers.PNDMScheduler(), 5)
    with pytest.raises(ValueError, match="spacing: unknown 'even'"):
        diffusers_grid(diffusers.DDIMScheduler(), 5, spacing="even")
