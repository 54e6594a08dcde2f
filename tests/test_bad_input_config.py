"""Bad input to TrainConfig, config files and data files: a named TypeError/ValueError before any training."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _named_error import assert_named_error

from scoresde._files import clean_stale_temporaries, load_tensor_file
from scoresde.config import TrainConfig
from scoresde.training import make_data

CONFIGS = [
    # booleans are booleans: 'false' is a truthy string and would switch the feature on
    (dict(importance="false"), TypeError, ["importance", "'false'"]),
    (dict(conditional="no"), TypeError, ["conditional", "'no'"]),
    (dict(progress=0), TypeError, ["progress", "0"]),
    (dict(tensorboard=None), TypeError, ["tensorboard", "None"]),
    # counts are integers (one policy, scoresde.checks: a non-integer is a TypeError)
    (dict(steps=2.5), TypeError, ["steps", "2.5"]),
    (dict(batch_size=True), TypeError, ["batch_size", "True"]),
    (dict(width="128"), ValueError, ["width", "'128'"]),
    (dict(seed=-1), ValueError, ["seed", "-1"]),
    (dict(seed=2**64 + 1), ValueError, ["seed", str(2**64 + 1), str(2**63 - 1)]),
    # numbers are finite numbers in range
    (dict(lr=float("nan")), ValueError, ["lr", "nan"]),
    (dict(ema_decay=1.0), ValueError, ["ema_decay", "1.0"]),
    (dict(sigma_data=float("inf")), ValueError, ["sigma_data", "inf"]),
    (dict(sigma_data=True), ValueError, ["sigma_data", "True"]),
    # strings are strings from a known set
    (dict(sde=1), TypeError, ["sde", "1"]),
    (dict(data=None), TypeError, ["data", "None"]),
    (dict(weighting="sigma"), ValueError, ["weighting", "'sigma'", "sigma2"]),
    # sde_kwargs are checked when the config is built, not when training starts
    (dict(sde_kwargs={"foo": 1}), ValueError, ["sde_kwargs", "'foo'", "beta_min, beta_max, T, t_min"]),
    (dict(sde="ve", sde_kwargs={"beta_max": 1}), ValueError, ["sde_kwargs", "'beta_max'", "sigma_min"]),
    (dict(sde_kwargs={"beta_max": 1e4}), ValueError, ["sde_kwargs", "beta_max=10000.0"]),
    (dict(sde_kwargs={"beta_min": "0.1"}), TypeError, ["sde_kwargs", "beta_min", "'0.1'"]),
    (dict(sde_kwargs=[1, 2]), ValueError, ["sde_kwargs", "[1, 2]"]),
]


@pytest.mark.parametrize("fields, exc, words", CONFIGS)
def test_bad_config_is_a_named_error(fields, exc, words):
    assert_named_error(lambda: TrainConfig(**fields), exc, words)


FILES = [
    ("c.json", '{"importance": "false"}', TypeError, ["importance", "'false'"]),
    ("c.yaml", 'importance: "false"\n', TypeError, ["importance", "'false'"]),
    ("c.yaml", "width: [1, 2\n", ValueError, ["c.yaml", "not valid YAML", "line 2"]),
    ("c.yaml", "- 1\n- 2\n", ValueError, ["c.yaml", "mapping", "list"]),
    ("c.yml", "sde_kwargs: {foo: 1}\n", ValueError, ["c.yml", "sde_kwargs", "'foo'", "beta_min"]),
    ("c.json", "{width: 3}", ValueError, ["c.json", "not valid JSON"]),
    ("c.json", '{"widht": 3}', ValueError, ["c.json", "'widht'", "width"]),
    ("c.toml", "width = 3", ValueError, ["c.toml", ".json, .yaml or .yml"]),
]


@pytest.mark.parametrize("name, text, exc, words", FILES)
def test_bad_config_file_is_a_named_error(tmp_path, name, text, exc, words):
    (tmp_path / name).write_text(text)
    assert_named_error(lambda: TrainConfig.from_file(tmp_path / name), exc, words)


def test_config_file_that_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        TrainConfig.from_file(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="UTF-8"):
        TrainConfig.from_file(tmp_path / "bin.json")


def test_yaml_booleans_are_booleans(tmp_path):
    # YAML's own booleans are accepted; they are what a YAML user means by "no"
    (tmp_path / "c.yaml").write_text("importance: true\nprogress: no\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml")
    assert cfg.importance is True and cfg.progress is False
    (tmp_path / "c.json").write_text(json.dumps({"importance": True}))
    assert TrainConfig.from_file(tmp_path / "c.json").importance is True


def test_replace_names_unknown_fields():
    with pytest.raises(ValueError, match="'widht'"):
        TrainConfig().replace(widht=3)


def _write_data_files(tmp_path):
    (tmp_path / "text.pt").write_text("not a tensor file\n")
    good = tmp_path / "good.pt"
    torch.save(torch.randn(8, 2), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:40])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    torch.save({"x": torch.randn(4, 2), "weird": object.__new__(torch.nn.Identity)}, tmp_path / "pickled.pt")
    (tmp_path / "folder.pt").mkdir()


DATA = [
    ("text.pt", ["data", "text.pt", "corrupt"]),
    ("truncated.pt", ["data", "truncated.pt", "corrupt"]),
    ("pickled.pt", ["data", "pickled.pt", "tensors only"]),
    ("objects.npy", ["data", "objects.npy", "object array"]),
    ("strings.npy", ["data", "strings.npy", "dtype <U1"]),
    ("garbage.npy", ["data", "garbage.npy", ".npy"]),
    ("folder.pt", ["data", "folder.pt", "folder"]),
    ("missing.pt", ["data", "missing.pt", "does not exist"]),
]


@pytest.mark.parametrize("name, words", DATA)
def test_bad_data_file_is_a_named_error(tmp_path, name, words):
    _write_data_files(tmp_path)
    for load in (lambda p: load_tensor_file(p, "data"), lambda p: make_data(str(p))):
        assert_named_error(lambda: load(tmp_path / name), ValueError, words)


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # run() waited for it: no process has this pid now
    stale = tmp_path / f".checkpoint.pt.tmp-{dead_pid}"
    mine = tmp_path / f".checkpoint.pt.tmp-{os.getpid()}"
    other = tmp_path / "checkpoint.pt.tmp-1"  # not a hidden temporary of ours: never touched
    for p in (stale, mine, other):
        p.write_bytes(b"partial")
    assert clean_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()
