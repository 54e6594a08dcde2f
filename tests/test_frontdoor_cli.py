"""The command line as a newcomer meets it: threads, progress in a log, train's flags and warm-up."""
import io
import os
import subprocess
import sys

import pytest
import torch

from scoresde import _progress
from scoresde.cli import build_parser, main
from scoresde.commands import train as train_cmd


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_every_command_takes_threads(keep_threads, tmp_path):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert "--threads" in command.format_help(), name
    torch.set_num_threads(2)
    assert main(["mixture", "--threads", "1", "--n", "50", "--steps", "3", "--quiet", "--out",
                 str(tmp_path / "m.png")]) == 0
    assert torch.get_num_threads() == 1


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--threads", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "positive integer" in err and len(err.strip().splitlines()) == 1


def test_line_progress_prints_plain_lines():
    buf = io.StringIO()
    bar = _progress.LineProgress(total=4, desc="stage", interval=0.0, file=buf)
    for _ in range(4):
        bar.update(1)
    bar.set_postfix_str("done")
    bar.close()
    bar.close()  # closing twice prints once
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("stage: 4/4 (100%)") and lines[-1].endswith("[done]")
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()


def test_progress_off_a_terminal_is_plain_lines_and_quiet_silences_it(tmp_path):
    cmd = [sys.executable, "-m", "scoresde", "study", "error-vs-steps", "--quick", "--methods", "ddim",
           "--steps", "4", "8", "--n", "8", "--out", str(tmp_path / "s")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "error vs steps: 3/3 (100%)" in run.stderr  # 1 reference + 2 step counts
    assert "\r" not in run.stderr and "\x1b" not in run.stderr
    quiet = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


def _train_args(*argv):
    return build_parser().parse_args(["train", "--out", "unused", *argv])


@pytest.mark.parametrize("argv, warmup", [(["--steps", "100"], 10), (["--steps", "20000"], 200),
                                          (["--steps", "5"], 0), (["--steps", "100", "--warmup", "50"], 50)])
def test_default_warmup_is_capped_by_steps(argv, warmup):
    """One rule for the CLI and Python: the CLI leaves warmup None unless given, TrainConfig resolves it."""
    from scoresde.config import TrainConfig

    cfg = train_cmd._config(_train_args(*argv))
    assert cfg.resolved_warmup() == warmup
    steps = int(argv[1])
    python = TrainConfig(steps=steps) if "--warmup" not in argv else TrainConfig(steps=steps, warmup=warmup)
    assert python.resolved_warmup() == warmup


def test_a_short_run_reaches_its_learning_rate():
    from scoresde.training import Trainer

    cfg = train_cmd._config(_train_args("--steps", "100", "--no-progress", "--no-tensorboard"))
    trainer = Trainer(cfg, None)
    assert trainer._lr(cfg.steps // 2) == cfg.lr


def test_train_flags_have_help_defaults_and_choices():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"]
    for action in train._actions:
        if action.option_strings and action.dest not in ("help",):
            assert action.help, action.option_strings
    by_flag = {a.option_strings[0]: a for a in train._actions if a.option_strings}
    assert tuple(by_flag["--parameterization"].choices) == ("eps", "score", "x0", "v", "velocity")
    assert "vp, subvp, ve, cosine, discrete, flow (default vp)" in by_flag["--sde"].help
    assert "default 512" in by_flag["--batch-size"].help
    assert "none" in by_flag["--precondition"].choices


# ----- sample and nll: sampler options, adaptive solvers, which files are written, --quiet -------------------
TOY = ["--width", "8", "--depth", "1", "--emb-dim", "8", "--batch-size", "8", "--no-progress", "--no-tensorboard"]
UNET = ["--net", "unet", "--net-kwargs", '{"channels": 8, "norm_groups": 4, "num_res_blocks": 1, "channel_mult": [1], '
        '"attn_resolutions": []}']


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontdoor_runs")
    assert main(["train", "--data", "eight_gaussians", "--steps", "3", "--out", str(root / "toy"), *TOY]) == 0
    assert main(["train", "--data", "digits", *UNET, "--steps", "1", "--batch-size", "4", "--no-progress",
                 "--no-tensorboard", "--out", str(root / "digits")]) == 0
    return root


def test_sample_passes_method_options_to_the_sampler(runs, tmp_path, capsys):
    from scoresde.sharded import sample_sharded
    from scoresde.training import load_model

    out = tmp_path / "s.pt"
    assert main(["sample", "--ckpt", str(runs / "toy"), "--method", "dpm_solver++:order=3", "--steps", "8", "--n", "6",
                 "--batch-size", "3", "--out", str(out), "--quiet"]) == 0
    assert "dpm_solver++(order=3), 8 steps, NFE 8" in capsys.readouterr().out
    model, _ = load_model(runs / "toy")
    with torch.no_grad():
        third, second = (sample_sharded(model, "dpm_solver++", 8, n=6, event_shape=(2,), batch_size=3, order=k).samples
                         for k in (3, 2))
    x = torch.load(out, weights_only=True)  # 8 steps: 3M takes third-order steps in the middle (not at 4)
    assert torch.equal(x, third) and not torch.allclose(x, second)


def test_adaptive_ode_reports_nfe_not_steps_and_plot_alone_writes_no_samples(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--ckpt", str(runs / "toy"), "--method", "ode", "--n", "4", "--plot", "p.png",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ode, adaptive, NFE" in out and "steps" not in out.split("NFE")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no samples.pt: only the plot was asked for


@pytest.mark.parametrize("extra, written", [([], ["samples.pt"]), (["--image-grid", "g.png"], ["g.png"]),
                                            (["--image-grid", "g.png", "--out", "s.npy"], ["g.png", "s.npy"])])
def test_sample_writes_samples_only_when_asked_or_nothing_else_is(runs, tmp_path, monkeypatch, extra, written):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--ckpt", str(runs / "digits"), "--method", "ddim", "--steps", "2", "--n", "2",
                 "--quiet", *extra]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    if "g.png" in written:  # the CLI's default scale, the same as Python's save_grid
        from PIL import Image

        from scoresde.images.grid import DEFAULT_SCALE, grid_pixels

        rows, cols = grid_pixels(2, 8, 8, scale=DEFAULT_SCALE)
        assert Image.open(tmp_path / "g.png").size == (cols, rows) and DEFAULT_SCALE == 4


def test_sample_help_says_when_samples_are_written(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "when neither --image-grid nor --plot is given" in text and "dpm_solver++:order=3" in text


def test_save_grid_defaults_to_the_cli_scale(tmp_path):
    from PIL import Image

    from scoresde.cli import build_parser
    from scoresde.images import save_grid
    from scoresde.images.grid import grid_pixels

    scale = build_parser().parse_args(["sample", "--ckpt", "x"]).grid_scale
    save_grid(torch.zeros(3, 1, 8, 8), tmp_path / "g.png")
    rows, cols = grid_pixels(3, 8, 8, scale=scale)
    assert scale > 1 and Image.open(tmp_path / "g.png").size == (cols, rows)


def test_sample_progress_is_plain_lines_and_quiet_silences_it(runs, tmp_path, capsys, monkeypatch):
    import functools

    from scoresde.samplers import base

    argv = ["sample", "--ckpt", str(runs / "toy"), "--method", "ddim", "--steps", "3", "--n", "2",
            "--out", str(tmp_path / "s.pt")]
    assert main(argv) == 0  # a short sampling call leaves nothing in a log (a bar that does not stay)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(base, "progress_bar", functools.partial(_progress.progress, interval=0.0))
    assert main(argv) == 0  # a long one (here: a line at every step) prints plain lines
    err = capsys.readouterr().err
    assert "ddim: 3/3 (100%)" in err and "\r" not in err and "\x1b" not in err
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_bar_that_does_not_stay_prints_its_end_only_after_printing_before():
    for interval, lines in ((1e9, 0), (0.0, 2)):
        buf = io.StringIO()
        bar = _progress.LineProgress(total=2, desc="inner", interval=interval, file=buf, leave=False)
        bar.update(1)
        bar.update(1)
        bar.close()
        assert len(buf.getvalue().splitlines()) == lines


def test_nll_reads_data_as_train_does(runs, tmp_path, capsys):
    """--data digits_test gives the points and levels of the split saved to a file and read with --levels 17."""
    from scoresde.images import digits, to_levels

    test = digits("test")
    torch.save(to_levels(test.x, 17), tmp_path / "test.pt")
    common = ["nll", "--ckpt", str(runs / "digits"), "--no-ode", "--bound", "discrete", "--steps", "3"]
    assert main([*common, "--points", str(tmp_path / "test.pt"), "--levels", "17", "--quiet"]) == 0
    from_file = capsys.readouterr()
    assert main([*common, "--data", "digits_test", "--n", "100000"]) == 0  # more than there are: all of them
    from_data = capsys.readouterr()
    bound = [line for line in from_file.out.splitlines() if line.startswith("bound")]
    assert bound and bound == [line for line in from_data.out.splitlines() if line.startswith("bound")]
    assert f"{test.x.shape[0]} points of dimension 64" in from_data.out
    assert from_file.err == "" and "[1/1] the discrete bound" in from_data.err  # --quiet silences the stage lines


def test_nll_data_levels_must_agree(runs, capsys):
    assert main(["nll", "--ckpt", str(runs / "digits"), "--data", "digits_test", "--levels", "256", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--levels" in err and "17 levels" in err


# ----- the trainer: its progress helper and the one warm-up rule ------------------------------------------
def test_trainer_progress_is_plain_lines_off_a_terminal(capsys):
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer

    cfg = TrainConfig(steps=3, batch_size=8, width=8, depth=1, emb_dim=8, tensorboard=False)
    Trainer(cfg, None).train()
    err = capsys.readouterr().err
    assert "train: 3/3 (100%)" in err and "\r" not in err and "\x1b" not in err


def test_default_warmup_is_recorded_and_kept_on_resume(tmp_path):
    """warmup=None resolves to min(200, steps // 10) when the run starts; the checkpoint records it, and a resume
    to more steps keeps it, so that the resumed run equals one trained straight through."""
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer, load_checkpoint

    small = dict(batch_size=8, width=8, depth=1, emb_dim=8, progress=False, tensorboard=False, ckpt_every=5)
    first = Trainer(TrainConfig(steps=20, **small), tmp_path / "run")
    assert first.config.warmup == 2
    first.train()
    assert load_checkpoint(tmp_path / "run")["config"]["warmup"] == 2
    resumed = Trainer(TrainConfig(steps=40, **small), tmp_path / "run", resume=True)
    assert resumed.config.warmup == 2  # not 40 // 10
    resumed.train()
    straight = Trainer(TrainConfig(steps=40, warmup=2, **small), None)
    straight.train()
    for a, b in zip(resumed.net.parameters(), straight.net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("argv, absent", [(["--steps", "0"], "MAX_STEPS"), (["--method", "nope"], "Sampler subclass")])
def test_sample_errors_name_the_flag_not_internals(tmp_path, capsys, argv, absent):
    assert main(["sample", "--ckpt", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and absent not in err and argv[0] in err
