"""Bad input to the surfaces added since the first bad-input round: image readers and levels, grids, the atomic
savers, DiscreteVPSDE's schedule, the diffusers bridge and the k-diffusion denoiser. Each case raises the named
exception type with the argument (and the value) in its message, before any work; where a file would be
written, nothing is.
"""
import errno
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from _named_error import assert_named_error
from PIL import Image

import scoresde as sd
from scoresde import toy
from scoresde._files import atomic_write, save_csv, save_png, save_tensor
from scoresde.images import from_levels, load_array, load_folder, save_grid, to_levels
from scoresde.interop import diffusers_alphas_cumprod, to_denoiser
from scoresde.sharded import sample_sharded

NAN = float("nan")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Bad image folders and files, made once."""
    root = tmp_path_factory.mktemp("bad_images")
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
    for name in ("cat", "dog"):
        (root / "stray" / name).mkdir(parents=True)
        Image.fromarray(grey).save(root / "stray" / name / "a.png")
    Image.fromarray(grey).save(root / "stray" / "loose.png")
    (root / "mixed").mkdir()
    Image.fromarray(grey).save(root / "mixed" / "a8.png")
    Image.fromarray(grey.astype(np.uint16) * 4000).save(root / "mixed" / "b16.png")
    np.save(root / "bytes_as_float.npy", np.full((2, 1, 4, 4), 200.0, dtype=np.float32))
    np.save(root / "scaled.npy", np.full((2, 1, 4, 4), -3.0, dtype=np.float32))
    nan = np.zeros((3, 1, 4, 4), dtype=np.float32)
    nan[2, 0, 1, 1] = NAN
    np.save(root / "nan.npy", nan)
    return root


VP_MIX = toy.mixture("eight_gaussians").model(sd.VPSDE())
D = to_denoiser(VP_MIX)
MLP = sd.ScoreModel(sd.nets.build_net("mlp", dim=2, sde=sd.VPSDE(), width=8, depth=1), sd.VPSDE(), "eps")
NAN_POINTS = torch.zeros(4, 2)
NAN_POINTS[1, 0] = NAN
NAN_IMAGES = torch.zeros(4, 1, 8, 8)
NAN_IMAGES[1:] = NAN

CASES = [
    # grey levels: out of range, fractional, non-finite
    ("from-levels-300", lambda f: from_levels(300, 256), ValueError, ["k", "0..255", "300"]),
    ("from-levels-negative", lambda f: from_levels(torch.tensor([-1, 3]), 17), ValueError, ["k", "0..16", "-1"]),
    ("from-levels-fraction", lambda f: from_levels(torch.tensor([0.5]), 17), ValueError, ["k", "fractional"]),
    ("from-levels-str", lambda f: from_levels("3", 17), TypeError, ["k", "str"]),
    ("to-levels-nan", lambda f: to_levels([NAN, 0.0], 256), ValueError, ["x", "non-finite", "nan", "(0,)"]),
    ("to-levels-inf", lambda f: to_levels(torch.tensor([[0.0, float("inf")]]), 17), ValueError, ["x", "inf", "(0, 1)"]),
    ("to-levels-str", lambda f: to_levels("0.5", 17), TypeError, ["x", "str"]),
    # image files and folders
    ("folder-stray-image", lambda f: load_folder(f / "stray"), ValueError, ["data", "'loose.png'", "cat", "sub-folder"]),
    ("folder-mixed-depth", lambda f: load_folder(f / "mixed"), ValueError, ["data", "b16.png", "a8.png", "16-bit"]),
    ("float-255", lambda f: load_array(f / "bytes_as_float.npy"), ValueError, ["data", "[200, 200]", "[-1, 1]", "uint8"]),
    ("float-outside", lambda f: load_array(f / "scaled.npy"), ValueError, ["data", "[-3, -3]", "[-1, 1]"]),
    ("nan-pixel", lambda f: load_array(f / "nan.npy"), ValueError, ["data", "nan.npy", "1 of the 3", "item 2", "NaN",
                                                                   "not the model"]),
    # grids: NaN, a missing folder, a picture too large to allocate
    ("grid-nan", lambda f: save_grid(NAN_IMAGES, f / "g.png"), ValueError, ["x", "3 of the 4", "image 1", "NaN"]),
    ("grid-missing-folder", lambda f: save_grid(torch.zeros(2, 1, 4, 4), f / "nowhere" / "g.png"), ValueError,
     ["path", "nowhere", "does not exist"]),
    ("grid-huge", lambda f: save_grid(torch.zeros(64, 3, 32, 32), f / "g.png", scale=100000), ValueError,
     ["scale", "100000", "at most"]),
    # the atomic savers: a missing folder is an OSError naming the file
    ("save-tensor-missing-folder", lambda f: save_tensor(torch.zeros(2), f / "nowhere" / "s.pt"), OSError,
     ["nothing was written"]),
    ("save-csv-missing-folder", lambda f: save_csv([[1, 2]], f / "nowhere" / "a.csv"), OSError, ["nothing was written"]),
    # DiscreteVPSDE's schedule
    ("betas-2d", lambda f: sd.DiscreteVPSDE(betas=torch.full((10, 100), 1e-3)), ValueError, ["betas", "(10, 100)",
                                                                                         "1-D"]),
    ("betas-empty", lambda f: sd.DiscreteVPSDE(betas=[]), ValueError, ["betas", "at least 2", "got 0"]),
    ("betas-scalar", lambda f: sd.DiscreteVPSDE(betas=torch.tensor(0.1)), ValueError, ["betas", "()"]),
    ("betas-one-bad", lambda f: sd.DiscreteVPSDE(betas=[0.1, 0.2, 1.5]), ValueError, ["betas[2]", "1.5"]),
    ("alphas-cumprod-rising", lambda f: sd.DiscreteVPSDE(alphas_cumprod=[0.9, 0.8, 0.85, 0.5]), ValueError,
     ["alphas_cumprod[2]", "0.85", "alphas_cumprod[1]", "decreasing"]),
    # a diffusers scheduler config names the key the user gave, not the derived alphas_cumprod
    ("beta-end-above-1", lambda f: sd.interop.diffusers_sde({"beta_end": 1.5}), ValueError, ["beta_end", "1.5"]),
    ("beta-start-zero", lambda f: diffusers_alphas_cumprod({"beta_start": 0.0}), ValueError, ["beta_start", "0.0"]),
    ("beta-start-str", lambda f: diffusers_alphas_cumprod({"beta_start": "1e-4"}), TypeError, ["beta_start", "'1e-4'"]),
    ("beta-end-underflow", lambda f: sd.interop.diffusers_sde({"beta_end": 0.9999, "num_train_timesteps": 4000}),
     ValueError, ["beta_end=0.9999", "num_train_timesteps=4000"]),
    ("trained-betas-2d", lambda f: diffusers_alphas_cumprod({"trained_betas": [[0.1, 0.2]], "num_train_timesteps": 2}),
     ValueError, ["trained_betas", "(1, 2)"]),
    # the k-diffusion denoiser
    ("denoiser-sigma-str", lambda f: D(torch.zeros(2, 2), "0.5"), TypeError, ["sigma", "str", "'0.5'"]),
    ("denoiser-sigma-int-tensor", lambda f: D(torch.zeros(2, 2), torch.tensor([1, 2])), TypeError, ["sigma", "int64"]),
    ("denoiser-sigma-outside", lambda f: D(torch.zeros(1, 2), torch.tensor([D.sigma_max * 1.01])), ValueError,
     ["sigma", repr(D.sigma_max)]),
    # leftovers of the first round: a grid of strings, unknown net options, x of the wrong size or with a NaN
    ("grid-of-strings", lambda f: sd.sample(MLP, MLP.sde, "ddim", 3, shape=(4, 2), grid=["a", "b", "c", "d"]), TypeError,
     ["grid", "numbers", "['a', 'b', 'c', 'd']"]),
    ("build-net-unknown-option", lambda f: sd.nets.build_net("unet", channel_mults=(1, 2), in_channels=1, image_size=8,
                                                             sde=sd.VPSDE()), ValueError,
     ["'channel_mults'", "'unet'", "channel_mult,", "num_res_blocks"]),
    ("build-net-missing", lambda f: sd.nets.build_net("mlp", dim=2), ValueError, ["'sde'", "'mlp'"]),
    ("mlp-wrong-dim", lambda f: MLP(torch.zeros(4, 3), 0.5), ValueError, ["x", "(4, 3)", "2 features"]),
    ("sharded-seed-huge", lambda f: sample_sharded(MLP, "ddim", 2, n=2, event_shape=(2,), seed=2**64),
     ValueError, ["seed", str(2**64), str(2**63 - 1)]),
    ("imputation-seed-huge", lambda f: sd.guidance.replacement_imputation(MLP, torch.zeros(4, 2), torch.ones(4, 2,
                                                                         dtype=torch.bool), generator=2**64),
     TypeError, ["generator", str(2**64), "torch.Generator", str(2**63 - 1)]),
    ("imputation-seed", lambda f: sd.guidance.replacement_imputation(MLP, torch.zeros(4, 2), torch.ones(4, 2,
                                                                    dtype=torch.bool), generator=7),
     TypeError, ["generator", "7", "manual_seed(7)"]),
    ("likelihood-nan-x", lambda f: sd.likelihood.log_likelihood(MLP, NAN_POINTS), ValueError, ["x", "1 non-finite"]),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_named_error(folder, call, exc, words):
    before = sorted(os.listdir(folder))
    assert_named_error(lambda: call(folder), exc, words)
    assert sorted(os.listdir(folder)) == before, "a file was written or left behind"


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    """Every saver goes through atomic_write: a full disk leaves the old bytes, no temporary, and an OSError naming
    the target; an exception of the writer itself propagates unchanged, with the same guarantees."""
    target = tmp_path / "a.png"
    save_png(np.zeros((4, 4), dtype=np.uint8), target)
    old = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(OSError) as info:
            save_png(np.full((4, 4), 255, dtype=np.uint8), target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "previous file is unchanged" in info.value.strerror
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["a.png"]

    def broken(fh):
        fh.write(b"half")
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        atomic_write(target, broken)
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["a.png"]


# ----- the diffusers bridge: broken folders and wrong inputs -----------------------------------------
def _tiny_unet(**kw):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw).eval()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    path = tmp_path_factory.mktemp("pipeline") / "ddpm"
    diffusers.DDPMPipeline(_tiny_unet(num_class_embeds=10), diffusers.DDPMScheduler()).save_pretrained(path)
    return path


def _weights(folder):
    return next(p for p in folder.iterdir() if p.name.startswith("diffusion_pytorch_model"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN = [
    ("malformed-index", lambda p: (p / "model_index.json").write_text("{bad"), ["obj", "model_index.json", "JSON"]),
    ("malformed-unet-config", lambda p: (p / "unet" / "config.json").write_text("{bad"),
     ["obj", "unet/config.json", "valid JSON"]),
    ("malformed-scheduler-config", lambda p: (p / "scheduler" / "scheduler_config.json").write_text("{"),
     ["scheduler_config.json", "valid JSON"]),
    ("no-weights", lambda p: _weights(p / "unet").unlink(), ["obj", "unet", "no weights"]),
    ("no-unet-folder", lambda p: shutil.rmtree(p / "unet"), ["obj", "unet", "missing"]),
    ("truncated-weights", lambda p: _truncate(_weights(p / "unet")), ["obj", "cannot load", "truncated"]),
]


@pytest.mark.parametrize("damage, words", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_pipeline_folders_are_named(pipeline, tmp_path, damage, words):
    copy = tmp_path / "ddpm"
    shutil.copytree(pipeline, copy)
    damage(copy)
    assert_named_error(lambda: sd.interop.from_diffusers(copy), ValueError, words)


def test_a_scheduler_file_that_is_not_json_is_named(tmp_path):
    pytest.importorskip("diffusers")
    (tmp_path / "scheduler_config.json").write_text("[1, 2")
    assert_named_error(lambda: diffusers_alphas_cumprod(str(tmp_path)), ValueError,
                       ["scheduler", "scheduler_config.json", "not valid JSON"])
    (tmp_path / "scheduler_config.json").write_text(json.dumps([1, 2]))
    assert_named_error(lambda: diffusers_alphas_cumprod(str(tmp_path)), ValueError, ["scheduler", "list", "object"])


def test_wrong_inputs_to_a_diffusers_model_are_named(pipeline):
    model, _ = sd.interop.from_diffusers(pipeline, class_labels=3)
    assert_named_error(lambda: model.predict(torch.zeros(2, 1, 8, 8), 0.5), ValueError,
                       ["x", "UNet2DModel", "3 channels", "(2, 1, 8, 8)"])
    assert_named_error(lambda: model.predict(torch.zeros(2, 2), 0.5), ValueError, ["x", "images", "(2, 2)"])
    for labels in (10, torch.tensor([0, -1])):
        assert_named_error(lambda labels=labels: sd.interop.from_diffusers(pipeline, class_labels=labels), ValueError,
                           ["class_labels", "0..9", "num_class_embeds=10"])
    assert_named_error(lambda: sd.interop.from_diffusers(pipeline, class_labels=torch.tensor([0.5])), TypeError,
                       ["class_labels", "float"])
    assert_named_error(lambda: sd.interop.from_diffusers(pipeline, class_labels=1, guidance_scale=2.0,
                                                         null_class_label=10),
                       ValueError, ["null_class_label", "0..9"])


def test_the_model_of_one_call_runs_on_the_sde_of_another(pipeline):
    """Two loads of one pipeline give equal SDEs (by value), so either's model samples on the other's SDE."""
    model, sde_a = sd.interop.from_diffusers(pipeline, class_labels=1)
    _, sde_b = sd.interop.from_diffusers(pipeline)
    assert sde_a is not sde_b and sde_a == sde_b and hash(sde_a) == hash(sde_b)
    assert sde_a != sd.DiscreteVPSDE() and sde_a != sd.DiscreteVPSDE(alphas_cumprod=sde_a.alpha(
        torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2, t_min=0.5)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = sd.sample(model, sde_b, "ddim", 2, x_T=x_T).samples
    b = sd.sample(model, sde_a, "ddim", 2, x_T=x_T).samples
    assert torch.equal(a, b)


def test_float32_sigmas_of_k_diffusion_grids_are_accepted_at_the_ends():
    """get_sigmas_karras(n, D.sigma_min, D.sigma_max) is float32: its ends round to within an ulp of the range.
    Those are clamped into it (the same output as at the exact end); two ulps' worth more is still refused."""
    for end in (D.sigma_min, D.sigma_max):
        s32 = torch.tensor([end], dtype=torch.float32)
        outward = torch.nextafter(s32, torch.tensor([0.0 if end == D.sigma_min else math.inf]))
        y = torch.randn(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        exact = D(y, torch.tensor([end], dtype=torch.float64))
        assert 0 < (float(outward) - end) * (1 if end == D.sigma_max else -1) <= 3 * end * torch.finfo(torch.float32).eps
        torch.testing.assert_close(D(y, outward), exact, rtol=0, atol=0)  # clamped onto the end
        torch.testing.assert_close(D(y, s32), exact)  # the end rounded to float32, either way
    far = torch.tensor([D.sigma_min * (1 - 1e-5)], dtype=torch.float32)
    assert_named_error(lambda: D(torch.zeros(1, 2), far), ValueError, ["sigma", repr(D.sigma_min), repr(float(far))])
