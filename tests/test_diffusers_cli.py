"""``scoresde sample --diffusers PATH`` and ``scoresde nll --diffusers PATH`` on a local pipeline folder
(a tiny UNet2DModel and a DDPMScheduler saved with ``save_pretrained``): the samples written are those of
``scoresde.sample`` with the model of ``from_diffusers`` on the same folder, and user errors exit 2 with
one line."""
import pytest
import torch

from scoresde.cli import main

diffusers = pytest.importorskip("diffusers")

from scoresde.interop import from_diffusers  # noqa: E402
from scoresde.sharded import sample_sharded  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    path = tmp_path_factory.mktemp("pipe") / "ddpm"
    diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler(prediction_type="v_prediction")).save_pretrained(path)
    return path


def test_sample_from_a_pipeline_folder(pipeline_dir, tmp_path, capsys):
    out, grid = tmp_path / "s.pt", tmp_path / "g.png"
    rc = main(["sample", "--diffusers", str(pipeline_dir), "--method", "ddim", "--steps", "3", "--n", "4",
               "--batch-size", "2", "--final-denoise", "--out", str(out), "--image-grid", str(grid)])
    assert rc == 0 and grid.is_file()
    written = torch.load(out)
    assert written.shape == (4, 3, 8, 8)
    model, _ = from_diffusers(str(pipeline_dir))
    with torch.no_grad():
        ref = sample_sharded(model, "ddim", 3, n=4, event_shape=(3, 8, 8), seed=0, batch_size=2,
                             device=torch.device("cpu"), grid="logsnr", final_denoise=True).samples
    torch.testing.assert_close(written, ref, rtol=0, atol=0)


def test_nll_of_a_pipeline_folder(pipeline_dir, tmp_path, capsys):
    points = tmp_path / "x.pt"
    torch.save(torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)), points)
    rc = main(["nll", "--diffusers", str(pipeline_dir), "--points", str(points), "--levels", "256", "--no-ode",
               "--bound", "continuous"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"diffusers pipeline {pipeline_dir}" in text and "bound" in text


@pytest.mark.parametrize("argv, match", [
    (["sample", "--out", "s.pt"], "--ckpt/--diffusers: give one of them"),
    (["sample", "--diffusers", "missing_dir", "--out", "s.pt"], "obj: 'missing_dir' is not a folder"),
    (["nll", "--diffusers", "{pipe}"], "--points: a diffusers pipeline's likelihood needs image points"),
    (["nll", "--diffusers", "{pipe}", "--ckpt", "run"], "--diffusers: give --ckpt or --diffusers, not both"),
])
def test_user_errors_exit_2_with_one_line(pipeline_dir, tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    rc = main([a.replace("{pipe}", str(pipeline_dir)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "s.pt").exists()
