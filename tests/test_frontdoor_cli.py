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
    cfg = train_cmd._config(_train_args(*argv))
    assert cfg.warmup == warmup


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
