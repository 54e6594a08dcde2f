"""The smoothness diagnostic (issue 18 item 2): the spectrum along lambda and the local order."""
import math

import pytest
import torch

import scoresde as sd
from scoresde.nets import ScoreMLP
from scoresde.studies.smoothness import lambda_spectrum, local_slopes, order_profile, plot_smoothness

F64 = torch.float64


def _x(n=8, seed=1):
    return torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _mixture():
    return sd.toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.6**2, 0.4**2])


def _random_mlp(sde, embedding, **kw):
    torch.manual_seed(0)
    net = ScoreMLP(2, sde, embedding=embedding, **kw).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)  # the output layer starts at zero: give it weights
    return sd.ScoreModel(net, sde, "eps")


def test_a_pure_tone_shows_at_its_frequency_with_its_amplitude():
    sde = sd.VPSDE()
    omega0, a0 = 12.0, 0.7

    def tone(x, t):  # eps = a0 sin(omega0 lambda(t)) in every component
        return a0 * torch.sin(omega0 * sde.lam(t))[:, None].expand_as(x)

    sp = lambda_spectrum(sd.ScoreModel(tone, sde, "eps"), _x(2), n=4096, output="eps")
    spacing = float(sp.omega[1])
    peak = int(sp.amplitude.argmax())
    assert abs(float(sp.omega[peak]) - omega0) <= spacing
    # a Hann window loses at most 1 - sinc-like scalloping (15%) off a bin centre
    assert a0 * 0.84 <= float(sp.amplitude[peak]) <= a0 * 1.01
    # and nothing far from the tone: the window's side lobes fall as 1 / omega^3
    assert sp.band_amplitude(3 * omega0, math.inf) < 1e-3 * a0


def test_the_exact_oracle_is_smooth_and_a_rough_net_is_not():
    sde = sd.VPSDE()
    smooth = lambda_spectrum(_mixture().model(sde), _x())
    total = smooth.band_amplitude(0, math.inf)
    # the oracle's eps is analytic in lambda: nothing left above 30 rad per unit lambda
    assert smooth.band_amplitude(30, math.inf) < 1e-4 * total
    # sinusoidal features at scale 100 (the old default of the image nets): amplitude up to 100 rad per unit lambda
    rough = lambda_spectrum(_random_mlp(sde, "sinusoidal", embed_scale=100.0), _x())
    assert rough.band_amplitude(30, math.inf) > 0.1 * rough.band_amplitude(0, math.inf)
    # the smooth embedding on the same random net: decays like the oracle
    new = lambda_spectrum(_random_mlp(sde, "smooth"), _x())
    assert new.band_amplitude(10, math.inf) < 1e-3 * new.band_amplitude(0, math.inf)


def test_local_slopes_recover_a_power_law():
    steps = [10, 20, 40, 80]
    assert local_slopes(steps, [3.0 * n**-2.5 for n in steps]) == pytest.approx([2.5] * 3, rel=1e-12)
    with pytest.raises(ValueError, match="errors"):
        local_slopes([10], [1.0])


def test_order_profile_on_the_oracle_shows_the_declared_orders_and_plots():
    sde = sd.VPSDE(t_min=0.25)  # the order tests' interval: asymptotic at these step counts
    model = _mixture().model(sde)
    x_T = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    prof = order_profile(model, ["ddim", "dpm_solver++"], [16, 24, 32, 48], x_T, tol=1e-12, solver="dopri5")
    # ddim is first order, dpm_solver++ (2M) second: local slopes within 0.3 of the declared order
    assert all(abs(s - 1) < 0.3 for s in prof.slopes["ddim"])
    assert all(abs(s - 2) < 0.3 for s in prof.slopes["dpm_solver++"])
    fig = plot_smoothness({"oracle": lambda_spectrum(model, x_T[:4])}, prof, title="t")
    assert len(fig.axes) == 2 and len(prof.rows()) == 8


def test_bad_input_is_named():
    sde = sd.VPSDE()
    model = _mixture().model(sde)
    with pytest.raises(ValueError, match="output: unknown 'noise'"):
        lambda_spectrum(model, _x(), output="noise")
    with pytest.raises(ValueError, match="n: expected an integer >= 16"):
        lambda_spectrum(model, _x(), n=4)
    with pytest.raises(ValueError, match="lam_range"):
        lambda_spectrum(model, _x(), lam_range=(1.0, 0.0))
    with pytest.raises(TypeError, match="model"):
        lambda_spectrum(lambda x, t: x, _x())


def test_the_study_command_writes_the_figure_and_both_tables(tmp_path, capsys):
    from scoresde.cli import main

    assert main(["study", "smoothness", "--quick", "--quiet", "--out", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["smoothness.png", "smoothness_orders.csv",
                                                                  "smoothness_spectrum.csv"]
    assert "local slopes" in capsys.readouterr().out


def test_the_study_runs_on_a_checkpoint(tmp_path, capsys):
    from scoresde.cli import main
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer

    Trainer(TrainConfig(steps=2, batch_size=16, width=16, depth=1, emb_dim=8, ckpt_every=2, warmup=1, progress=False,
                        tensorboard=False), tmp_path / "run").train()
    assert main(["study", "smoothness", "--quick", "--quiet", "--checkpoint", str(tmp_path / "run"),
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "amplitude" in out and (tmp_path / "s" / "smoothness_spectrum.csv").exists()
