"""scoresde.studies.tune and `scoresde tune`: the tuned configuration is never worse than the zoo's best on the
held-out batch, the fit never worse than its start, and the artifact reproduces the tuned error exactly through
sample() and through ScoresdeScheduler."""
from __future__ import annotations

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.studies.distances import endpoint_error
from scoresde.studies.references import reference_pf_ode
from scoresde.studies.tune import load_tuned, tune, zoo_configs

SMALL = dict(n_calibration=32, n_heldout=32, methods=[("ddim", {}), ("deis", {"order": 3}), ("heun", {})],
             grids=["logsnr", "time_rho2"], n_grid_opt=1, grid_opt_evals=20, fit_iterations=15, progress=False)


@pytest.fixture(scope="module")
def oracle():
    sde = sd.DiscreteVPSDE()  # the schedule ScoresdeScheduler's default config describes
    return toy.mixture("eight_gaussians").model(sde), sde


@pytest.fixture(scope="module")
def tuned(oracle):
    model, sde = oracle
    return tune(model, sde, [4, 6], generator=torch.Generator().manual_seed(0), **SMALL)


def test_tuned_is_never_worse_than_the_zoo_and_the_fit_never_worse_than_its_start(tuned):
    for nfe, t in tuned.tuned.items():
        zoo = tuned.best(nfe, "zoo")
        assert t.errors["heldout"] <= zoo["error_heldout"]
        assert t.nfe_used <= nfe
        fit = [r for r in tuned.rows if r["nfe"] == nfe and r["source"] == "fit"]
        assert len(fit) == 1
        # the fit's start is the best eligible candidate on the calibration batch, a DEIS row here
        starts = [r for r in tuned.rows if r["nfe"] == nfe and r["source"] in ("zoo", "grid_opt")
                  and r["method"] == "deis" and r["label"].split(" | ")[-1] in fit[0]["label"]]
        assert starts and fit[0]["error_heldout"] <= min(r["error_heldout"] for r in starts) + 1e-15
    assert tuned.calls["total"] == sum(v for k, v in tuned.calls.items() if k != "total") > 0
    assert tuned.wall_time > 0 and tuned.reference_error < 1e-8
    # the budget counts calls: heun (2 per step) runs half the steps
    heun = [r for r in tuned.rows if r["family"] == "heun" and r["nfe"] == 6]
    assert heun and all(r["steps"] * 2 - 1 <= 6 for r in heun)


def test_the_artifact_round_trips_through_sample(tuned, oracle, tmp_path):
    model, sde = oracle
    # the held-out batch, drawn as tune drew it: calibration first, then held-out
    g = torch.Generator().manual_seed(0)
    sde.prior_sample((32, 2), generator=g, dtype=torch.float64)
    x_val = sde.prior_sample((32, 2), generator=g, dtype=torch.float64)
    ref = reference_pf_ode(model, x_val, float(sde.T), float(sde.t_min), tol=1e-10, estimate_error=False).x
    for nfe, t in tuned.tuned.items():
        path = t.save(tmp_path / f"tuned_{nfe}.json")
        loaded = load_tuned(path)
        assert loaded == t
        res = sd.sample(model, sde, str(path), x_T=x_val)  # by path
        assert res.nfe == t.nfe_used
        assert endpoint_error(res.samples, ref) == t.errors["heldout"]
        assert loaded.sample(model, x_T=x_val).samples.equal(res.samples)


def test_the_artifact_round_trips_through_the_scheduler(tuned, oracle, tmp_path):
    pytest.importorskip("diffusers")
    model, sde = oracle
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for nfe, t in tuned.tuned.items():
        sched = load_tuned(t.save(tmp_path / "t.json")).scheduler()
        assert repr(sched.sde) == t.sde
        sched.set_timesteps(None)
        x = x_T
        for ts in sched.timesteps:  # the pipeline's loop, with the oracle's eps at the network's timestep
            t_cont = (ts.to(torch.float64) + 1) / sde.N
            x = sched.step(model.eps(x, t_cont.expand(x.shape[0])), ts, x).prev_sample
        ours = t.sample(model, x_T=x_T).samples
        assert len(sched.timesteps) == t.nfe_used
        # diffusers hands the timesteps over in float32: the oracle is called at t rounded to ~1e-7 (relative),
        # the tolerance of tests/test_interop_scheduler.py
        assert float((x - ours).norm() / ours.norm()) < 1e-6


def test_sample_refuses_a_tuned_sampler_for_another_sde(tuned, tmp_path):
    path = tuned.tuned[4].save(tmp_path / "t.json")
    other = sd.VPSDE()
    with pytest.raises(ValueError, match="sde: the tuned sampler was made for"):
        sd.sample(toy.mixture("eight_gaussians").model(other), other, str(path), x_T=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="steps: the tuned sampler"):
        sd.sample(toy.mixture("eight_gaussians").model(tuned_sde := sd.DiscreteVPSDE()), tuned_sde, str(path),
                  steps=99, x_T=torch.zeros(2, 2))
    (tmp_path / "bad.json").write_text(json.dumps({"method": "ddim"}))
    with pytest.raises(ValueError, match="is not a tuned sampler"):
        load_tuned(tmp_path / "bad.json")


def test_figure_and_table(tuned):
    import matplotlib.pyplot as plt

    fig = tuned.figure()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "tuned" in labels and any(lab.startswith("deis") for lab in labels)
    plt.close(fig)
    table = tuned.table()
    assert "tuning cost" in table and str(tuned.calls["total"]) in table


@pytest.mark.parametrize("kwargs, match", [
    ({"budgets": []}, "budgets"), ({"budgets": [0]}, "budgets"), ({"budgets": "5"}, "budgets"),
    ({"n_calibration": 1}, "n_calibration"), ({"methods": ["ddpm"]}, "methods"), ({"methods": ["nope"]}, "method"),
    ({"grids": ["nope"]}, "grid"), ({"dtype": torch.int64}, "dtype"),
])
def test_bad_input_is_named_before_any_work(oracle, kwargs, match):
    model, sde = oracle
    calls = model.nfe
    args = {"budgets": [4], **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        tune(model, sde, args.pop("budgets"), **{**SMALL, **args})
    assert model.nfe == calls


def test_zoo_all_is_every_deterministic_stepped_sampler():
    names = {n for n, _ in zoo_configs("all")}
    assert {"ddim", "deis", "ipndm", "dpm_solver++", "unipc", "heun"} <= names
    assert not names & {"ddpm", "euler_maruyama", "pc", "torchsde", "linear_multistep", "ode", "scipy_ode"}


def test_cli_on_the_oracle(tmp_path, capsys):
    from scoresde.cli import main

    out = tmp_path / "tune"
    rc = main(["tune", "--oracle", "eight_gaussians", "--budgets", "4", "--out", str(out), "--quick", "--quiet",
               "--methods", "ddim,deis", "--n-calibration", "16", "--n-heldout", "16", "--fit-iterations", "5",
               "--grid-opt-evals", "10", "--threads", "1"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"tune_table.txt", "tune.csv", "tune.png", "tuned_nfe4.json"}
    t = load_tuned(out / "tuned_nfe4.json")
    assert t.model_id == "oracle eight_gaussians" and t.nfe == 4 and math.isfinite(t.errors["heldout"])
    assert "tuning cost" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--oracle", "nope"], "--oracle"), (["--oracle", "eight_gaussians", "--budgets", "a"], "--budgets"),
    (["--oracle", "eight_gaussians", "--methods", "ddpm"], "--methods"), (["--ckpt", "/nonexistent"], "--ckpt"),
    (["--diffusers", "/nonexistent"], "--diffusers"), (["--oracle", "eight_gaussians", "--n-heldout", "1"], "--n-heldout"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, argv, match):
    from scoresde.cli import main

    assert main(["tune", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and not (tmp_path / "o").exists()


def test_cli_on_a_checkpoint_and_a_diffusers_folder(tmp_path):
    """The two other routes end to end, tiny: a 2-step MLP run and a random diffusers UNet folder."""
    from scoresde.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "eight_gaussians", "--sde", "vp", "--steps", "2", "--batch-size", "16",
                 "--no-progress", "--no-tensorboard", "--out", str(run), "--threads", "1"]) == 0
    common = ["--budgets", "3", "--quick", "--quiet", "--methods", "ddim,deis", "--n-calibration", "4",
              "--n-heldout", "4", "--fit-iterations", "2", "--grid-opt", "0", "--threads", "1"]
    assert main(["tune", "--ckpt", str(run), "--out", str(tmp_path / "t1"), *common]) == 0
    t = load_tuned(tmp_path / "t1" / "tuned_nfe3.json")
    assert t.model_id.startswith("checkpoint ") and "sha256:" in t.model_id
    # the artifact samples the run from the command line, and gives what sample() gives with it
    out = tmp_path / "s.pt"
    assert main(["sample", "--ckpt", str(run), "--method", str(tmp_path / "t1" / "tuned_nfe3.json"), "--n", "8",
                 "--seed", "3", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    from scoresde.sharded import sample_sharded
    from scoresde.training import load_model

    model, _ = load_model(run)
    expected = sample_sharded(model, str(tmp_path / "t1" / "tuned_nfe3.json"), None, n=8, event_shape=(2,), seed=3)
    assert torch.equal(torch.load(out), expected.samples)
    assert main(["sample", "--ckpt", str(run), "--method", str(tmp_path / "t1" / "tuned_nfe3.json"),
                 "--steps", "7", "--out", str(out)]) == 2

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    assert main(["tune", "--diffusers", str(tmp_path / "ddpm"), "--out", str(tmp_path / "t2"), *common,
                 "--no-fit"]) == 0
    t = load_tuned(tmp_path / "t2" / "tuned_nfe3.json")
    assert t.model_id.startswith("diffusers ") and t.sde == repr(sd.DiscreteVPSDE())
