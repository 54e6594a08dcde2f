"""Checkpoints and random states: atomic writes, strict loads, exact resume.

A checkpoint (``<out>/checkpoint.pt``) holds the model, the EMA, the optimiser, the step, every random
state (the run's generator of each rank, torch's global and CUDA states, Python's and NumPy's), the
resolved config, the network's record (:func:`scoresde.training.spec.net_spec`) and the data's grey
levels. It is written atomically (:func:`atomic_save`: a temporary file, fsync, then ``os.replace``),
so the previous good checkpoint survives any crash, and read with ``weights_only=True`` and a strict
key check (:func:`load_checkpoint`). Weights that do not fit the network rebuilt from the record (a
tampered or mixed-up file) are refused by :func:`load_weights` with the file and the mismatch named.
Random states are stored as tensors, ints and tuples only, so that ``weights_only`` loading accepts them.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import atomic_write, save_tensor, save_text

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "atomic_save", "checkpoint_path", "load_checkpoint",
           "load_weights", "load_optimizer", "global_rng_state", "set_global_rng_state", "rank_seed"]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
FORMAT = "scoresde-train-2"
_OLD_FORMATS = ("scoresde-train-1",)
_CKPT_KEYS = frozenset({"format", "step", "config", "net", "data", "model", "ema", "optimizer", "rng", "world_size"})


# ---------------------------------------------------------------------------------------------
# Random states
# ---------------------------------------------------------------------------------------------
def global_rng_state() -> dict:
    """torch's (CPU and CUDA), Python's and NumPy's global random states, as weights_only-loadable values."""
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                  "has_gauss": int(st[3]), "cached_gaussian": float(st[4])},
    }


def set_global_rng_state(s: dict) -> None:
    """Restore what :func:`global_rng_state` recorded."""
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generator: independent streams per rank, all fixed by the one seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def atomic_save(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    ``obj``: text, bytes, or anything ``torch.save`` writes; the package's one atomic writer
    (:func:`scoresde._files.atomic_write`) does the work, and first removes the temporaries of earlier
    processes killed mid-write (so a run that starts or resumes, which writes config.json at once, clears them).
    """
    if isinstance(obj, str):
        save_text(obj, path)
    elif isinstance(obj, bytes):
        atomic_write(path, lambda fh: fh.write(obj))
    else:
        save_tensor(obj, path)


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of ``path``: the file itself, or ``checkpoint.pt`` in a run folder."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a trainer checkpoint (a file, or a run folder holding ``checkpoint.pt``) safely and strictly.

    Raises ValueError if the file is missing, unreadable, not a scoresde checkpoint, or has missing
    or unexpected keys; the weights are checked against the network where they are loaded
    (:func:`load_weights`).
    """
    file = checkpoint_path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint: {str(file)!r} does not exist")
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, wrong format, unsafe pickle: all mean "not loadable"
        raise ValueError(f"checkpoint: {str(file)!r} is corrupt or not a torch checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in _OLD_FORMATS:
        raise ValueError(f"checkpoint: {str(file)!r} has the old format {ckpt['format']!r}, which did not record the "
                         f"network's name, options and event shape; this scoresde reads {FORMAT!r} only: retrain "
                         "the run (scoresde train)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {str(file)!r} is not a scoresde training checkpoint (format {FORMAT})")
    missing, unexpected = sorted(_CKPT_KEYS - set(ckpt)), sorted(set(ckpt) - _CKPT_KEYS)
    if missing or unexpected:
        raise ValueError(f"checkpoint: {str(file)!r} has missing keys {missing} and unexpected keys {unexpected}")
    return ckpt


def _listed(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_weights(module: nn.Module, state, file, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, with a mismatch named instead of torch's RuntimeError.

    ValueError naming the checkpoint ``file``, which part (``what``: 'model', 'ema') and what mismatched:
    keys the network has and the file lacks, keys the file has and the network lacks, entries that are
    not tensors, and shapes that differ.
    """
    where = f"checkpoint: {str(file)!r}: the {what} weights do not fit the network its record describes"
    if not isinstance(state, dict):
        raise ValueError(f"{where} (expected a state dict, got {type(state).__name__})")
    own = module.state_dict()
    problems = []
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    not_tensors = sorted(k for k in set(own) & set(state) if not isinstance(state[k], torch.Tensor))
    if not_tensors:
        problems.append(f"not tensors: {_listed(not_tensors)}")
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if shapes:
        problems.append(f"shapes differ: {_listed(shapes)}")
    if problems:
        raise ValueError(f"{where} ({'; '.join(problems)}); the file was modified or mixed up with another run's")
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:  # e.g. a dtype torch cannot copy
        raise ValueError(f"{where} ({str(err).splitlines()[0]})") from None


def load_optimizer(optimizer: torch.optim.Optimizer, state, file) -> None:
    """``optimizer.load_state_dict(state)``, with a mismatch (groups, parameter counts, shapes) named."""
    where = f"checkpoint: {str(file)!r}: the optimizer state does not fit the network"
    if not isinstance(state, dict) or "param_groups" not in state or "state" not in state:
        raise ValueError(f"{where} (expected a dict with 'state' and 'param_groups')")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"{where} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    # torch casts the moments to each parameter without comparing shapes: a wrong shape would fail later
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != p.shape:
                    raise ValueError(f"{where} ({name} of shape {tuple(value.shape)} for a parameter of shape "
                                     f"{tuple(p.shape)})")
