"""Latent diffusion (scoresde.latent): the autoencoder, its run folder, latent training and sampling, diffusers'
latent pipelines, and the command line.

Everything runs on tiny models (widths 8, digits at 16x16, a few steps): the checks are identities
(scale normalisation, bit-exact resume, decode = diffusers' decode / s, shapes), not sample quality,
which benchmarks/latent.py measures.
"""
import json
import re

import pytest
import torch

import scoresde as sd
from scoresde.cli import main
from scoresde.config import TrainConfig
from scoresde.latent import (AutoencoderConfig, AutoencoderTrainer, autoencoder_images, from_diffusers_latent,
                             latent_dataset, load_autoencoder)
from scoresde.training import Trainer

diffusers = pytest.importorskip("diffusers")

TINY = {"image_size": 16, "channels": (8, 8), "norm_groups": 4, "batch_size": 8, "steps": 4, "ckpt_every": 2}


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    trainer = AutoencoderTrainer(AutoencoderConfig(**TINY), out)
    record = trainer.train()
    return out, record, trainer


def test_scale_factor_normalises_the_training_latents(ae_run):
    out, record, _ = ae_run
    codec = load_autoencoder(out)
    z = latent_dataset(codec).x.double()
    # scale = 1 / std(mu) over the training set, so the scaled latents have unit standard deviation
    # (float32 encoding: agreement to ~1e-5)
    assert abs(float(z.std()) - 1.0) < 1e-4
    assert codec.scale_factor == pytest.approx(record["scale_factor"], rel=1e-12)
    assert tuple(record["latent_shape"]) == (4, 8, 8) == codec.latent_shape
    assert record["recon_mse_train"] >= 0 and record["recon_mse_test"] >= 0


def test_round_trip_shapes_and_decode_is_diffusers_decode_over_scale(ae_run):
    out, _, _ = ae_run
    codec = load_autoencoder(out)
    x = autoencoder_images("digits", 16, split="test").x[:5]
    z = codec.encode(x)
    assert z.shape == (5, 4, 8, 8)
    x_hat = codec.decode(z)
    assert x_hat.shape == x.shape
    # the saved folder is a diffusers AutoencoderKL carrying the scale as its scaling_factor
    vae = diffusers.AutoencoderKL.from_pretrained(out / "vae", local_files_only=True, low_cpu_mem_usage=False)
    assert vae.config.scaling_factor == pytest.approx(codec.scale_factor, rel=1e-12)
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(z, mu * vae.config.scaling_factor, rtol=0, atol=0)
        torch.testing.assert_close(x_hat, vae.decode(z / vae.config.scaling_factor).sample, rtol=0, atol=0)


def test_resume_is_bit_exact(tmp_path, ae_run):
    _, _, whole = ae_run
    cfg = AutoencoderConfig(**TINY)
    AutoencoderTrainer(cfg, tmp_path / "r").train(2)
    resumed = AutoencoderTrainer(cfg, tmp_path / "r", resume=True)
    assert resumed.step == 2
    resumed.train()
    for a, b in ((whole.vae, resumed.vae), (whole.ema, resumed.ema)):
        for (k, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(u, v), k


def test_checkpoint_refusals(tmp_path, ae_run):
    out, _, _ = ae_run
    with pytest.raises(ValueError, match="already holds an autoencoder checkpoint"):
        AutoencoderTrainer(AutoencoderConfig(**TINY), out)
    with pytest.raises(ValueError, match="latent_channels: checkpoint 4 vs now 2"):
        AutoencoderTrainer(AutoencoderConfig(**{**TINY, "latent_channels": 2}), out, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        AutoencoderTrainer(AutoencoderConfig(**TINY), tmp_path, resume=True)


@pytest.mark.parametrize("change, match", [({"norm_groups": 3}, "norm_groups: 3 does not divide"),
                                           ({"image_size": 18, "channels": (8, 8, 8)}, "image_size: 18"),
                                           ({"kl_weight": -1.0}, "kl_weight"), ({"channels": ()}, "channels")])
def test_config_refusals(change, match):
    with pytest.raises(ValueError, match=match):
        AutoencoderConfig(**{**TINY, **change})


def test_encode_sample_decode(ae_run):
    out, _, _ = ae_run
    codec = load_autoencoder(out)
    data = latent_dataset(codec, labels=True)
    cfg = TrainConfig(data="latent", net="unet", net_kwargs={"channels": 8, "channel_mult": [1], "num_res_blocks": 1},
                      batch_size=8, steps=2, progress=False, tensorboard=False, conditional=True)
    trainer = Trainer(cfg, data=data)
    trainer.train()
    assert trainer.config.num_classes == 10 and abs(trainer.config.sigma_data - 1.0) < 1e-4
    model = _unconditional(trainer)
    x_T = model.sde.prior_sample((3, *codec.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        res = sd.sample(model, model.sde, "ddim", 3, x_T=x_T)
    assert res.samples.shape == (3, 4, 8, 8)
    assert codec.decode(res.samples).shape == (3, 1, 16, 16)
    # classifier-free guidance in the latent: the null label is num_classes (the trainer's label dropout)
    from scoresde.guidance import classifier_free_guidance

    guided = classifier_free_guidance(lambda x, t, y: trainer.ema.module(x, t, y), trainer.sde, 3, 2.0,
                                      null_label=10, parameterization=trainer.config.parameterization)
    with torch.no_grad():
        g = sd.sample(guided, trainer.sde, "ddim", 3, x_T=x_T).samples
    assert g.shape == (3, 4, 8, 8) and not torch.equal(g, res.samples)
    assert codec.decode(g).shape == (3, 1, 16, 16)


def _unconditional(trainer):
    net = trainer.ema.module
    null = trainer.config.num_classes

    def fn(x, t):
        return net(x, t, torch.full((x.shape[0],), null, dtype=torch.long))
    return sd.ScoreModel(fn, trainer.sde, trainer.config.parameterization)


# ---------------------------------------------------------------------------------------------
# diffusers' latent pipelines
# ---------------------------------------------------------------------------------------------
def _tiny_unet(in_channels: int, size: int):
    return diffusers.UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                                 block_out_channels=(8,), layers_per_block=1, down_block_types=("DownBlock2D",),
                                 up_block_types=("UpBlock2D",), norm_num_groups=4)


def test_from_diffusers_latent_with_a_vae_folder(tmp_path):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                                  latent_channels=4, norm_num_groups=4, sample_size=8, scaling_factor=0.7)
    _tiny_unet(4, 4).save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    diffusers.DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    model, sde, codec = from_diffusers_latent(tmp_path)
    assert codec.scale_factor == pytest.approx(0.7) and codec.latent_shape == (4, 4, 4)
    assert codec.image_shape == (1, 8, 8)
    x_T = sde.prior_sample((2, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = sd.sample(model, sde, "dpm_solver++", 4, x_T=x_T).samples
        x = codec.decode(z)
        # the loaded copy against the original module: equal up to float32 round-off of their kernels
        torch.testing.assert_close(x, vae.decode(z / 0.7).sample, rtol=1e-5, atol=1e-6)
    assert x.shape == (2, 1, 8, 8)


def _tiny_vq():
    torch.manual_seed(0)
    return diffusers.VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=3,
                             num_vq_embeddings=16, norm_num_groups=4, sample_size=8, scaling_factor=0.5)


def test_from_diffusers_latent_with_an_ldm_pipeline(tmp_path):
    vq = _tiny_vq()
    pipe = diffusers.LDMPipeline(vqvae=vq, unet=_tiny_unet(3, 4), scheduler=diffusers.DDIMScheduler(100))
    pipe.save_pretrained(tmp_path)
    model, sde, codec = from_diffusers_latent(tmp_path)
    assert codec.scale_factor == 0.5 and codec.latent_shape == (3, 4, 4) and codec.image_shape == (1, 8, 8)
    with torch.no_grad():
        z = sd.sample(model, sde, "ddim", 3, x_T=torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))).samples
        # LDMPipeline's decoding: vqvae.decode(latents / scaling_factor), quantised inside decode
        torch.testing.assert_close(codec.decode(z), vq.decode(z / 0.5).sample, rtol=1e-5, atol=1e-6)


def test_scoresde_scheduler_drives_an_ldm_pipeline(tmp_path):
    """LDMPipeline(vqvae, unet, ScoresdeScheduler(dpm_solver++)) gives the decoded images of scoresde.sample with the
    model and codec of from_diffusers_latent on the pipeline's own x_T (float32: agreement to 1e-5)."""
    from scoresde.interop import ScoresdeScheduler

    options = {"order": 2, "variant": "multistep"}
    sched = ScoresdeScheduler(num_train_timesteps=100, method="dpm_solver++", options=options)
    pipe = diffusers.LDMPipeline(vqvae=_tiny_vq(), unet=_tiny_unet(3, 4), scheduler=diffusers.DDIMScheduler(100))
    pipe.save_pretrained(tmp_path)
    pipe.scheduler = sched
    pipe.set_progress_bar_config(disable=True)
    images = torch.from_numpy(pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5,
                                   output_type="np").images)
    model, sde, codec = from_diffusers_latent(tmp_path)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    with torch.no_grad():
        # on the scheduler's own grid (by default diffusers' timesteps)
        z = sd.sample(model, sde, "dpm_solver++", x_T=x_T, grid=sched.schedule.t, final_denoise=True,
                      **options).samples
    ours = (codec.decode(z) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert float(((ours > 0) & (ours < 1)).double().mean()) > 0.25  # the clamp leaves content to compare
    assert float((ours - images).norm() / images.norm()) < 1e-5


def test_from_diffusers_latent_refuses_a_pixel_folder(tmp_path):
    _tiny_unet(1, 8).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="no vae/ .* or vqvae/"):
        from_diffusers_latent(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        from_diffusers_latent(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
CLI_AE = ["--image-size", "16", "--channels", "8,8", "--norm-groups", "4", "--batch-size", "8", "--no-progress"]
CLI_NET = ["--net", "unet", "--net-kwargs", '{"channels": 8, "channel_mult": [1], "num_res_blocks": 1}',
           "--batch-size", "8", "--no-progress", "--no-tensorboard"]


def test_cli_autoencoder_train_latent_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["autoencoder", "--out", "ae", "--steps", "2", *CLI_AE]) == 0
    assert "scale factor" in capsys.readouterr().out
    assert main(["autoencoder", "--out", "ae", "--resume", "--steps", "3", *CLI_AE]) == 0
    assert json.loads((tmp_path / "ae" / "autoencoder.json").read_text())["step"] == 3
    assert main(["train", "--latent", "ae", "--out", "lat", "--steps", "2", *CLI_NET]) == 0
    assert main(["train", "--out", "lat", "--resume", "--steps", "3", "--no-progress"]) == 0  # the run records its AE
    assert main(["sample", "--ckpt", "lat", "--n", "4", "--batch-size", "4", "--steps", "3", "--out", "s.pt",
                 "--image-grid", "g.png"]) == 0
    assert torch.load(tmp_path / "s.pt").shape == (4, 1, 16, 16)
    assert (tmp_path / "g.png").is_file()
    # the likelihood runs in the latent space (4x8x8 = 256): encoded points are continuous, no --levels asked
    codec = load_autoencoder(tmp_path / "ae")
    torch.save(codec.encode(autoencoder_images("digits", 16, split="test").x[:2]), tmp_path / "z.pt")
    capsys.readouterr()
    assert main(["nll", "--ckpt", "lat", "--points", "z.pt", "--estimator", "hutchinson", "--n-probes", "1",
                 "--rtol", "1e-2", "--atol", "1e-2"]) == 0
    assert "2 points of dimension 256" in capsys.readouterr().out
    # a latent run whose autoencoder was moved away: one line naming it, exit 2
    (tmp_path / "ae").rename(tmp_path / "ae_moved")
    assert main(["sample", "--ckpt", "lat", "--n", "2", "--out", "t.pt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ckpt: the run's autoencoder: autoencoder run" in err and "does not exist" in err


@pytest.mark.parametrize("latent, extra, match", [
    ("missing", [], "--latent: autoencoder run '.*missing' does not exist"),
    ("afile", [], "--latent: '.*afile' is a file"),
    ("empty", [], r"--latent: '.*empty' is not a finished autoencoder run \(no autoencoder.json\)"),
    ("empty", ["--data", "digits"], "--data: 'digits' given with --latent"),
])
def test_cli_latent_errors(tmp_path, monkeypatch, capsys, latent, extra, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    assert main(["train", "--latent", latent, "--out", "run", *extra, *CLI_NET]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("scoresde train: error: ")
    assert re.search(match, err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_without_diffusers_the_error_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[diffusers\]"):
        AutoencoderTrainer(AutoencoderConfig(**TINY))
    with pytest.raises(ImportError, match=r"pip install -e \.\[diffusers\]"):
        load_autoencoder(tmp_path)
