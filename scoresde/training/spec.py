"""The network's record in a checkpoint, and the network (or score model) rebuilt from it.

:func:`net_spec` records the registered name, the constructor's keyword arguments and the event shape
of one sample; :func:`build_from_spec` rebuilds the network (wrapped in the run's preconditioning), and
:func:`load_model` turns a run's checkpoint into a :class:`~scoresde.models.ScoreModel`, whatever the
architecture.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from torch import nn

from .. import make_sde
from ..config import RESERVED_NET_KWARGS, TrainConfig
from ..models import ScoreModel
from ..nets import NETS, build_net
from ..nets.precondition import precondition
from .checkpoints import checkpoint_path, load_checkpoint, load_weights
from .device import resolve_device

__all__ = ["net_spec", "build_from_spec", "load_model"]


def _takes(name: str) -> tuple[dict, bool]:
    params = inspect.signature(NETS[name]).parameters
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def net_spec(cfg: TrainConfig, event_shape: tuple[int, ...]) -> dict:
    """The record a checkpoint keeps of its network: ``{'name', 'kwargs', 'event_shape'}``.

    ``kwargs`` are the constructor's keyword arguments except ``sde`` (rebuilt from the config):
    ``parameterization`` and ``num_classes`` when the constructor takes them, the data's shape as
    the constructor names it (``event_shape``; or ``dim = prod(event_shape)``; or ``in_channels`` and
    ``image_size`` for square images ``(C, H, H)``), and the run's options
    (:meth:`TrainConfig.net_options`). Options the constructor does not take are refused by name.
    """
    name, event_shape = cfg.net, tuple(int(n) for n in event_shape)
    if name not in NETS:
        raise ValueError(f"net: unknown {name!r}; allowed: {', '.join(NETS)}")
    params, takes_any = _takes(name)
    kwargs: dict = {}
    if "event_shape" in params:
        kwargs["event_shape"] = list(event_shape)
    elif "dim" in params:
        kwargs["dim"] = math.prod(event_shape)
    elif "in_channels" in params and "image_size" in params:
        if len(event_shape) != 3 or event_shape[1] != event_shape[2]:
            raise ValueError(f"data: the net {name!r} takes square images (C, H, H); the data's event shape is "
                             f"{event_shape}")
        kwargs["in_channels"], kwargs["image_size"] = event_shape[0], event_shape[1]
    else:
        raise ValueError(f"net: {name!r} takes none of the shape arguments event_shape, dim, or in_channels and "
                         "image_size; its constructor cannot be given the data's shape")
    if "parameterization" in params or takes_any:
        kwargs["parameterization"] = cfg.parameterization
    if cfg.num_classes is not None:
        if "num_classes" not in params and not takes_any:
            raise ValueError(f"conditional: the net {name!r} takes no num_classes; it cannot be trained with labels")
        kwargs["num_classes"] = cfg.num_classes
    options = cfg.net_options()
    unknown = [] if takes_any else sorted(k for k in options if k not in params)
    if unknown:
        known = sorted(k for k in params if k not in RESERVED_NET_KWARGS)
        raise ValueError(f"net_kwargs: the net {name!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(known)}")
    kwargs.update(options)
    return {"name": name, "kwargs": kwargs, "event_shape": list(event_shape)}


def build_from_spec(spec: dict, cfg: TrainConfig, sde) -> nn.Module:
    """The network of a :func:`net_spec` record under ``sde``, wrapped in ``cfg.precondition`` when set."""
    if spec["name"] not in NETS:
        raise ValueError(f"net: {spec['name']!r} is not registered here; registered: {', '.join(NETS)}")
    params, takes_any = _takes(spec["name"])
    extra = {"sde": sde} if "sde" in params or takes_any else {}
    net = build_net(spec["name"], **extra, **spec["kwargs"])
    return precondition(net, cfg.precondition, sde=sde, parameterization=cfg.parameterization,
                        sigma_data=cfg.sigma_data if cfg.sigma_data is not None else 1.0)


def load_model(path: str | Path, *, ema: bool = True, device=None, label: int | None = None) -> tuple[ScoreModel, TrainConfig]:
    """The trained score model of a run (EMA weights by default) as a :class:`ScoreModel`, and its config.

    The network is rebuilt from the checkpoint's record (registered name, keyword arguments, event
    shape; see :func:`net_spec`), whatever the architecture. The returned model carries ``.net``
    (the module), ``.event_shape`` (one sample's shape) and ``.levels`` (the data's grey levels, or
    None). ``label`` conditions a class-conditional network on one class (None: the null label).
    """
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    sde = make_sde(cfg.sde, **cfg.sde_kwargs)
    state = ckpt["ema"] if ema else ckpt["model"]
    if ema and isinstance(state, dict):  # AveragedModel keeps the network under "module." and a step counter
        state = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    spec = ckpt["net"]
    net = build_from_spec(spec, cfg, sde)
    load_weights(net, state, checkpoint_path(path), "EMA" if ema else "model")
    device = torch.device("cpu") if device is None else resolve_device(str(device))
    net = net.to(device).eval()
    if label is not None:
        if cfg.num_classes is None:
            raise ValueError(f"label: the run in {path} is unconditional; leave label=None")
        if not 0 <= int(label) < cfg.num_classes:
            raise ValueError(f"label: expected an integer in [0, {cfg.num_classes}), got {label}")

    def fn(x, t):
        y = None if label is None else torch.full((x.shape[0],), int(label), dtype=torch.long, device=x.device)
        return net(x, t, y) if cfg.num_classes is not None else net(x, t)

    model = ScoreModel(fn, sde, cfg.parameterization)
    model.net = net
    model.event_shape = tuple(spec["event_shape"])
    model.levels = ckpt["data"]["levels"]
    return model, cfg
