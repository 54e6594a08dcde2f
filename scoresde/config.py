"""The training configuration: one frozen dataclass, written next to the checkpoints as JSON.

The CLI builds a :class:`TrainConfig` (from flags, optionally over a JSON/YAML file); the library never
parses arguments. Unknown keys in a file are an error naming them. Fields that are ``None`` by default
(``sigma_data``, ``num_classes``) are *resolved* from the data when training starts, and the resolved
config is what the checkpoint stores, so a resumed run checks against exactly what ran.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "RESUME_FREE_FIELDS"]

#: fields that may differ between a checkpoint and the run that resumes it: they change neither the
#: model nor the random stream (``steps`` extends a run; ``device`` moves it).
RESUME_FREE_FIELDS = frozenset({"steps", "ckpt_every", "log_every", "progress", "tensorboard", "device"})

_CHOICES = {
    "parameterization": ("eps", "score", "x0", "v", "velocity"),
    "weighting": ("sigma2", "likelihood", "min_snr", "snr"),
    "time_sampling": ("uniform", "stratified", "antithetic"),
    "embedding": ("fourier", "sinusoidal"),
    "time_input": ("log_snr", "t"),
    "net": ("mlp",),
}


def _same_kind(err: Exception, message: str) -> Exception:
    """A TypeError or ValueError like ``err`` with a message that says where it came from."""
    return TypeError(message) if isinstance(err, TypeError) else ValueError(message)


#: fields that take a boolean; from a file only a JSON/YAML boolean (never the string "false")
_BOOL_FIELDS = ("conditional", "importance", "progress", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Data: ``data`` is a toy set name (``scoresde.toy.available()``) or a ``.pt``/``.npy`` file of shape
    ``(N, *event)`` (a ``.pt`` may hold ``{'x': ..., 'y': ...}`` or ``(x, y)`` with integer labels).
    ``conditional`` trains with labels (mixture components for the toy mixtures), replacing each by
    the null label with probability ``label_dropout`` (classifier-free guidance training).
    """

    # data
    data: str = "eight_gaussians"
    conditional: bool = False
    label_dropout: float = 0.1
    # equation and loss
    sde: str = "vp"
    sde_kwargs: dict = field(default_factory=dict)
    parameterization: str = "eps"
    weighting: str = "sigma2"
    time_sampling: str = "uniform"
    importance: bool = False
    min_snr_gamma: float = 5.0
    # network
    net: str = "mlp"
    width: int = 128
    depth: int = 3
    embedding: str = "fourier"
    emb_dim: int = 64
    time_input: str = "log_snr"
    sigma_data: float | None = None
    num_classes: int | None = None
    # optimisation
    steps: int = 20000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    # bookkeeping
    log_every: int = 1
    ckpt_every: int = 1000
    t_buckets: int = 4
    device: str = "cpu"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("data", "sde", *_CHOICES):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a string, got {getattr(self, name)!r} of type "
                                f"{type(getattr(self, name)).__name__}")
        for name in _BOOL_FIELDS:  # 'false' is a truthy string: only a real boolean says what is meant
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected true or false (a boolean), got {v!r} of type {type(v).__name__}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: unknown {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        from . import SDES
        if self.sde not in SDES:
            raise ValueError(f"sde: unknown {self.sde!r}; allowed: {', '.join(SDES)}")
        if not isinstance(self.sde_kwargs, dict):
            raise ValueError(f"sde_kwargs: expected a mapping of SDE arguments, got {self.sde_kwargs!r}")
        self._check_sde_kwargs()
        for name in ("width", "depth", "emb_dim", "steps", "batch_size", "log_every", "ckpt_every", "t_buckets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("warmup", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        for name, lo, hi, what in (("lr", 0, math.inf, "> 0"), ("weight_decay", 0, math.inf, ">= 0"),
                                   ("grad_clip", 0, math.inf, ">= 0 (0: no clipping)"),
                                   ("ema_decay", 0, 1, "in [0, 1)"), ("label_dropout", 0, 1, "in [0, 1)"),
                                   ("min_snr_gamma", 0, math.inf, "> 0")):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v
            ok = ok and (v < hi) and not (name in ("lr", "min_snr_gamma") and v == 0)
            if not ok:
                raise ValueError(f"{name}: expected a number {what}, got {v!r}")
        if self.sigma_data is not None and not (isinstance(self.sigma_data, (int, float))
                                                and not isinstance(self.sigma_data, bool)
                                                and math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"sigma_data: expected a positive number or None (estimated from the data), got {self.sigma_data!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 1):
            raise ValueError(f"num_classes: expected a positive integer or None (from the data), got {self.num_classes!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device: expected a device string such as 'cpu', 'cuda', 'cuda:1' or 'auto', got {self.device!r}")

    def _check_sde_kwargs(self) -> None:
        """Build the SDE once, so unknown or bad ``sde_kwargs`` fail here, naming the argument, not mid-run."""
        from . import SDES
        from .sde import check_sde_kwargs

        check_sde_kwargs(SDES[self.sde], self.sde_kwargs, name=f"sde_kwargs (sde={self.sde!r})")
        try:
            SDES[self.sde](**self.sde_kwargs)
        except (TypeError, ValueError) as err:
            raise _same_kind(err, f"sde_kwargs (sde={self.sde!r}): {err}") from None

    # ----- conversions ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise a ValueError that names them."""
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a mapping of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ValueError(f"config: unknown keys {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``, needs PyYAML) config file."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ValueError(f"config: {str(path)!r} {what}")
        if path.suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"config: expected a .json, .yaml or .yml file, got {str(path)!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"config: {str(path)!r} is not a UTF-8 text file") from None
        except OSError as err:
            raise ValueError(f"config: cannot read {str(path)!r} ({err.strerror or err})") from None
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ValueError(f"config: reading {path.name} needs PyYAML (pip install pyyaml); or use JSON") from None
            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as err:
                where = getattr(err, "problem_mark", None)
                at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                raise ValueError(f"config: {str(path)!r} is not valid YAML{at}: {problem}") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"config: {path} is not valid JSON: {err}") from None
        if d is None:  # an empty file: all defaults
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"config: {str(path)!r} must hold a mapping of TrainConfig fields, got a "
                             f"{type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise _same_kind(err, f"config {str(path)!r}: {err}") from None

    def replace(self, **changes) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def mismatches(self, other: TrainConfig, ignore=RESUME_FREE_FIELDS) -> dict[str, tuple[Any, Any]]:
        """Fields (outside ``ignore``) whose values differ: ``{name: (self's, other's)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}
