"""README.md's Python blocks run as printed, in order, in one namespace.

A block is marked by an HTML comment on the line before its fence (invisible on GitHub):
``<!-- readme-test: slow -->`` runs only with ``-m slow``; ``needs runs/digits_unet`` or ``needs
ddpm-folder`` names a premise the README states in words (a trained run from section 6, a saved
diffusers pipeline), which the test then creates, small, in the working folder. The blocks run in a
subprocess in a temporary folder (what they write stays there) with a time limit.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


def readme_blocks() -> list[dict]:
    """Each python block: its code, the README line it starts on, and its marks."""
    text = README.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        marks = [w.strip() for w in mark.group(1).split(",")] if mark else []
        blocks.append({"code": m.group(1), "line": line, "slow": "slow" in marks,
                       "needs": [w.split(" ", 1)[1] for w in marks if w.startswith("needs ")]})
    return blocks


# premises the README states in words, made small
SETUP = {
    "runs/digits_unet": textwrap.dedent("""
        from scoresde.cli import main
        assert main(["train", "--data", "digits", "--net", "unet", "--net-kwargs",
                     '{"channels": 8, "channel_mult": [1], "num_res_blocks": 1}', "--steps", "3",
                     "--batch-size", "16", "--no-progress", "--no-tensorboard", "--out", "runs/digits_unet"]) == 0
    """),
    "ddpm-folder": textwrap.dedent("""
        import diffusers, torch
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                     block_out_channels=(8, 16), norm_num_groups=4,
                                     down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"))
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained("ddpm-folder")
    """),
}

RUNNER = textwrap.dedent("""
    import json, sys, time, traceback
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__readme__"}
    for b in blocks:
        start = time.perf_counter()
        try:
            exec(compile(b["code"], f"README.md:{b['line']}", "exec"), ns)
        except BaseException:
            traceback.print_exc()
            print(f"README block at line {b['line']} failed", file=sys.stderr)
            sys.exit(1)
        print(f"README block at line {b['line']}: ok in {time.perf_counter() - start:.1f} s", flush=True)
""")


def run_blocks(blocks, tmp_path, timeout):
    import json

    code = []
    for need in sorted({n for b in blocks for n in b["needs"]}):
        code.append({"code": SETUP[need], "line": 0})
    code += [{"code": b["code"], "line": b["line"]} for b in blocks]
    (tmp_path / "blocks.json").write_text(json.dumps(code))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return run.stdout


def test_readme_has_the_blocks_this_test_runs():
    blocks = readme_blocks()
    assert len(blocks) >= 6
    assert all(need in SETUP for b in blocks for need in b["needs"])
    assert sum(not b["slow"] for b in blocks) >= 4  # the default suite runs most of them


def test_readme_quick_blocks_run_as_printed(tmp_path):
    """The blocks not marked slow, in order, in one namespace (each may use the names of the ones before)."""
    blocks = [b for b in readme_blocks() if not b["slow"]]
    out = run_blocks(blocks, tmp_path, timeout=400)
    assert out.count(": ok in") == len(blocks)
    assert "True" in out  # the stepped loop equals sample()


@pytest.mark.slow
def test_readme_every_block_runs_as_printed(tmp_path):
    blocks = readme_blocks()
    out = run_blocks(blocks, tmp_path, timeout=1800)
    assert out.count(": ok in") == len(blocks) + len({n for b in blocks for n in b["needs"]})
