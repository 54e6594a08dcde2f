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

from .checks import SEED_MAX, check_count

__all__ = ["TrainConfig", "RESUME_FREE_FIELDS", "NET_OPTION_FIELDS", "RESERVED_NET_KWARGS", "default_warmup"]

#: fields that may differ between a checkpoint and the run that resumes it: they change neither the
#: model nor the random stream (``steps`` extends a run; ``device`` moves it).
RESUME_FREE_FIELDS = frozenset({"steps", "ckpt_every", "log_every", "progress", "tensorboard", "device"})

_CHOICES = {
    "parameterization": ("eps", "score", "x0", "v", "velocity"),
    "weighting": ("sigma2", "likelihood", "min_snr", "snr"),
    "time_sampling": ("uniform", "stratified", "antithetic"),
    "embedding": ("smooth", "fourier", "sinusoidal"),
    "time_input": ("log_snr", "t"),
    "loss": ("dsm", "flow_matching"),
}
#: choices that may also be None (the network's own default)
_OPTIONAL = frozenset({"embedding", "time_input"})
#: network options given as their own fields (None: the network's default); each is passed to the
#: network only when set, and only a network whose constructor takes it accepts it
NET_OPTION_FIELDS = ("width", "depth", "embedding", "emb_dim", "time_input")
#: keyword arguments the trainer itself gives every network (from the SDE, the target, the data)
RESERVED_NET_KWARGS = frozenset({"sde", "parameterization", "num_classes", "dim", "in_channels", "image_size",
                                 "event_shape"})


#: the default warm-up: at most this many steps, and at most 1/WARMUP_FRACTION of the run
WARMUP_MAX, WARMUP_FRACTION = 200, 10


def default_warmup(steps: int) -> int:
    """``min(200, steps // 10)``: the warm-up of ``TrainConfig(warmup=None)``, short enough that a short run
    reaches its learning rate (a 100-step run warming up over 200 steps never would)."""
    return min(WARMUP_MAX, steps // WARMUP_FRACTION)


def _same_kind(err: Exception, message: str) -> Exception:
    """A TypeError or ValueError like ``err`` with a message that says where it came from."""
    return TypeError(message) if isinstance(err, TypeError) else ValueError(message)


#: fields that take a boolean; from a file only a JSON/YAML boolean (never the string "false")
_BOOL_FIELDS = ("conditional", "importance", "progress", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Data: ``data`` is a toy set name (``scoresde.toy.available()``), ``'digits'`` (scikit-learn's
    8x8 digits, training split; ``'digits_test'`` the test split), a ``.pt``/``.npy`` file of shape
    ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, D)`` (uint8: 256 levels scaled to [-1, 1]; a ``.pt`` may
    hold ``{'x': ..., 'y': ...}`` or ``(x, y)`` with integer labels) or a folder of PNG/JPEG images,
    resized to ``image_size`` when given (see :mod:`scoresde.images.datasets`).
    ``conditional`` trains with labels (mixture components for the toy mixtures), replacing each by
    the null label with probability ``label_dropout`` (classifier-free guidance training).

    Loss: ``loss='dsm'`` is denoising score matching with ``weighting`` (:func:`scoresde.losses.dsm_loss`);
    ``loss='flow_matching'`` is the velocity regression ``||u_theta - (eps - x_0)||^2`` and needs
    ``sde='flow'`` and ``parameterization='velocity'`` (:func:`scoresde.losses.flow_matching_loss`).

    Network: ``net`` is a name registered in :data:`scoresde.nets.NETS`; ``net_kwargs`` its
    constructor's options (JSON values); ``width``, ``depth``, ``embedding``, ``emb_dim`` and
    ``time_input`` are shorthands for options of the same name (None: the network's default). The
    network's raw output is the ``parameterization`` target itself when ``precondition=None``;
    ``precondition='edm'`` (the default) wraps it in EDM's preconditioning
    (:mod:`scoresde.nets.precondition`, with ``sigma_data``), under which every target trains the
    same function and only the report differs. The default is 'edm' because it is the robust one:
    on eight_gaussians under VP (MLP 128x3, 1500 steps, 20-step samplers) the un-preconditioned eps
    network sends 10-17% of its samples beyond radius 6 (W2 16.6 against a two-sample floor of
    0.26), the x0 network reaches W2 0.69, and the EDM-wrapped one 0.44. Choose None to compare
    targets as the networks' raw outputs.

    Optimisation: AdamW at ``lr`` after a linear warm-up over ``warmup`` steps; ``warmup=None`` (the
    default) is :func:`default_warmup` of ``steps``, ``min(200, steps // 10)``, resolved by the
    :class:`~scoresde.training.Trainer` when a run starts and recorded in its config and checkpoint, so
    a resumed run (with ``warmup=None`` or the recorded value) keeps the warm-up it started with.
    :meth:`resolved_warmup` gives the number.
    """

    # data
    data: str = "eight_gaussians"
    conditional: bool = False
    label_dropout: float = 0.1
    image_size: int | None = None
    # equation and loss
    sde: str = "vp"
    sde_kwargs: dict = field(default_factory=dict)
    parameterization: str = "eps"
    loss: str = "dsm"
    weighting: str = "sigma2"
    time_sampling: str = "uniform"
    importance: bool = False
    min_snr_gamma: float = 5.0
    # network
    net: str = "mlp"
    net_kwargs: dict = field(default_factory=dict)
    width: int | None = None
    depth: int | None = None
    embedding: str | None = None
    emb_dim: int | None = None
    time_input: str | None = None
    precondition: str | None = "edm"
    sigma_data: float | None = None
    num_classes: int | None = None
    # optimisation
    steps: int = 20000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int | None = None
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
            if not isinstance(getattr(self, name), str) and not (name in _OPTIONAL and getattr(self, name) is None):
                raise TypeError(f"{name}: expected a string{' or None' if name in _OPTIONAL else ''}, got {getattr(self, name)!r} of type "
                                f"{type(getattr(self, name)).__name__}")
        for name in _BOOL_FIELDS:  # 'false' is a truthy string: only a real boolean says what is meant
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected true or false (a boolean), got {v!r} of type {type(v).__name__}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed and not (name in _OPTIONAL and getattr(self, name) is None):
                raise ValueError(f"{name}: unknown {getattr(self, name)!r}; allowed: {', '.join(allowed)}"
                                 + (" or None" if name in _OPTIONAL else ""))
        from . import SDES
        if self.sde not in SDES:
            raise ValueError(f"sde: unknown {self.sde!r}; allowed: {', '.join(SDES)}")
        if not isinstance(self.sde_kwargs, dict):
            raise ValueError(f"sde_kwargs: expected a mapping of SDE arguments, got {self.sde_kwargs!r}")
        self._check_sde_kwargs()
        self._check_net_and_loss()
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "t_buckets"):
            check_count(name, getattr(self, name))  # a non-integer is a TypeError, below 1 a ValueError
        for name in ("warmup", "seed"):
            if name == "warmup" and self.warmup is None:  # the default: resolved from steps (default_warmup)
                continue
            check_count(name, getattr(self, name), minimum=0, maximum=None if name == "warmup" else SEED_MAX)
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

    def _check_net_and_loss(self) -> None:
        from .nets import NETS
        if self.net not in NETS:
            raise ValueError(f"net: unknown {self.net!r}; allowed: {', '.join(NETS)}")
        for name in ("width", "depth", "emb_dim", "image_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive integer or None, got {v!r}")
        if not isinstance(self.net_kwargs, dict) or not all(isinstance(k, str) for k in self.net_kwargs):
            raise ValueError(f"net_kwargs: expected a mapping of option names to values, got {self.net_kwargs!r}")
        try:
            json.dumps(self.net_kwargs, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"net_kwargs: expected JSON values (numbers, strings, booleans, lists, null), got "
                             f"{self.net_kwargs!r}") from None
        reserved = sorted(RESERVED_NET_KWARGS & set(self.net_kwargs))
        if reserved:
            raise ValueError(f"net_kwargs: {', '.join(map(repr, reserved))} are set by the trainer (from sde, "
                             f"parameterization, the data and num_classes); remove them")
        both = sorted(k for k in NET_OPTION_FIELDS if getattr(self, k) is not None and k in self.net_kwargs)
        if both:
            raise ValueError(f"net_kwargs: {', '.join(map(repr, both))} also given as a field (--{both[0].replace('_', '-')}); give "
                             "each option once")
        if self.precondition not in (None, "edm"):
            raise ValueError(f"precondition: unknown {self.precondition!r}; allowed: None, 'edm'")
        if self.loss == "flow_matching":
            if self.sde != "flow" or self.parameterization != "velocity":
                raise ValueError(f"loss: 'flow_matching' regresses the velocity of the path alpha = 1 - t, "
                                 f"sigma = t; it needs sde='flow' and parameterization='velocity', got "
                                 f"sde={self.sde!r}, parameterization={self.parameterization!r}")
            if self.weighting != "sigma2" or self.importance:
                raise ValueError(f"loss: 'flow_matching' has no time weighting; leave weighting='sigma2' and "
                                 f"importance=False, got weighting={self.weighting!r}, importance={self.importance!r}")

    def resolved_warmup(self) -> int:
        """``warmup``, or :func:`default_warmup` of ``steps`` when it is None."""
        return default_warmup(self.steps) if self.warmup is None else self.warmup

    def net_options(self) -> dict[str, Any]:
        """The network's own options: ``net_kwargs`` and the option fields that are set."""
        opts = {k: getattr(self, k) for k in NET_OPTION_FIELDS if getattr(self, k) is not None}
        return {**opts, **self.net_kwargs}

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
