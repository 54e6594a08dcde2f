r"""diffusers models in scoresde: a pipeline, a UNet or any denoising network as a ScoreModel on its schedule.

A diffusers scheduler config describes a discrete DDPM schedule of ``N = num_train_timesteps`` steps,
``alphas_cumprod[k] = prod_{j <= k} (1 - beta_j)``. :class:`~scoresde.sde.DiscreteVPSDE` puts knot
``k`` at ``t = (k + 1) / N`` with ``alpha(t)^2 = alphas_cumprod[k]``, so

* the network's integer timestep ``k`` is the continuous time ``t = (k + 1) / N`` and back
  ``k = N t - 1`` (``ScoreModel(..., time_input='discrete')``);
* a diffusers run over ``timesteps`` is a scoresde run over the user grid ``(timesteps + 1) / N``;
  diffusers' last step to ``alpha = 1, sigma = 0`` (``final='zero'``) is scoresde's
  ``final_denoise=True`` (a first-order step to sigma = 0 returns the data prediction), and its last
  step to ``alphas_cumprod[0]`` (``final='sigma_min'``) is one more grid point at ``t = 1/N``.

The schedule is computed as diffusers computes it (betas in float32, their cumulative product in
float32) and then held in float64: near t = 0, ``sigma^2 = 1 - alphas_cumprod`` is ~1e-4, and the
float32 rounding of ``alphas_cumprod`` alone moves sigma there by ~1e-4 relative, so a schedule
recomputed in float64 would not reproduce a diffusers run.

``prediction_type`` maps to the parameterisation: ``epsilon`` -> ``'eps'``, ``v_prediction`` ->
``'v'`` (diffusers' ``v = alpha eps - sigma x0``), ``sample`` -> ``'x0'``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import guidance as _guidance
from ..models import ScoreModel
from ..sde import DiscreteVPSDE

__all__ = ["from_diffusers", "diffusers_grid", "diffusers_equivalent", "diffusers_sde", "diffusers_alphas_cumprod",
           "diffusers_betas", "load_diffusers_model",
           "DiffusersGrid", "network_output", "BETA_SCHEDULES", "PREDICTION_TYPES", "TIME_ROUNDINGS"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
TIME_ROUNDINGS = (None, "round", "floor")
# grid times (k + 1) / N come back from N t - 1 as k up to the rounding of t in the state's dtype
# (float32: ~1e-4 at k ~ 1000); 'floor' must not drop such a k to k - 1
_FLOOR_SLACK = 1e-3


def _require_diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - CI installs the extra
        raise ImportError("scoresde.interop needs diffusers: pip install 'scoresde[diffusers]'") from e
    return diffusers


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------
def _config(scheduler) -> dict[str, Any]:
    """A scheduler's config as a plain dict: from a scheduler, a config mapping, or a folder/JSON file."""
    # '_use_default_values' tells from_config to drop those keys: an override of one would be lost
    if isinstance(scheduler, Mapping):
        return {k: v for k, v in scheduler.items() if k != "_use_default_values"}
    if hasattr(scheduler, "config") and isinstance(scheduler.config, Mapping):
        return {"_class_name": type(scheduler).__name__,
                **{k: v for k, v in scheduler.config.items() if k != "_use_default_values"}}
    if isinstance(scheduler, (str, os.PathLike)):
        import json

        path = os.fspath(scheduler)
        for candidate in (path, os.path.join(path, "scheduler_config.json"),
                          os.path.join(path, "scheduler", "scheduler_config.json")):
            if os.path.isfile(candidate):
                return _read_json(candidate, "scheduler")
        raise ValueError(f"scheduler: no scheduler config at {path!r} (looked for the file itself, "
                         "scheduler_config.json and scheduler/scheduler_config.json)")
    raise TypeError(f"scheduler: expected a diffusers scheduler, its config (a mapping) or a path to "
                    f"scheduler_config.json, got {type(scheduler).__name__}")


def _read_json(path: str, name: str) -> dict[str, Any]:
    """A JSON object from ``path``; a ValueError naming ``name`` and the file if it is not one."""
    import json

    try:
        with open(path) as fh:
            value = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: {path!r} is not valid JSON ({err}); it may be truncated or edited by hand") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read {path!r} ({err.strerror or err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name}: {path!r} holds a JSON {type(value).__name__}, expected an object (a config)")
    return value


_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def _check_model_folder(folder: str, what: str) -> None:
    """A saved diffusers model folder holds config.json and a weights file: say which is missing."""
    if not os.path.isdir(folder):
        raise ValueError(f"obj: {what} folder {folder!r} is missing (model_index.json lists it); the pipeline was "
                         "saved incompletely or the folder was moved")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"obj: {what} folder {folder!r} has no config.json")
    if not any(os.path.isfile(os.path.join(folder, w)) for w in _WEIGHTS):
        raise ValueError(f"obj: {what} folder {folder!r} has no weights (expected {_WEIGHTS[0]} or {_WEIGHTS[1]})")


def _from_pretrained(load, path: str):
    """diffusers' from_pretrained with its OSErrors (truncated weights, a missing file) as a ValueError naming ``path``."""
    try:
        return load(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"obj: cannot load the diffusers model saved in {path!r} ({type(err).__name__}: {first}); "
                         "is a file truncated or missing? Save it again with save_pretrained") from None


def diffusers_alphas_cumprod(config) -> Tensor:
    """``alphas_cumprod`` of a diffusers scheduler config, computed as diffusers computes it (float32),
    returned in float64. Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule`` (linear, scaled_linear, squaredcos_cap_v2) and ``trained_betas``."""
    return torch.cumprod(1.0 - diffusers_betas(config), dim=0).to(torch.float64)


def diffusers_betas(config) -> Tensor:
    """The float32 ``betas`` of a diffusers scheduler config, as diffusers computes them (see
    :func:`diffusers_alphas_cumprod`)."""
    cfg = _config(config)
    n = cfg.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"num_train_timesteps: expected an integer >= 2, got {n!r}")
    if cfg.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr: True gives alphas_cumprod[-1] = 0 (infinite noise at the last "
                         "step), which a DiscreteVPSDE cannot represent; supported: False")
    trained = cfg.get("trained_betas")
    beta_start, beta_end = cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)
    schedule = cfg.get("beta_schedule", "linear")
    if trained is None and schedule in ("linear", "scaled_linear"):
        for key, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{key}: expected a number in (0, 1), got {value!r}")
            if not 0 < value < 1:
                raise ValueError(f"{key}: expected a number in the open interval (0, 1) (a DDPM beta), got {value!r}")
    if trained is not None:
        try:
            betas = torch.tensor(trained, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"trained_betas: expected a list of numbers, got {trained!r:.80}") from None
        if betas.ndim != 1 or betas.numel() != n:
            raise ValueError(f"trained_betas: expected {n} values (num_train_timesteps={n}) in a flat list, got "
                             f"shape {tuple(betas.shape)}")
        bad = ~(torch.isfinite(betas) & (betas > 0) & (betas < 1))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"trained_betas: expected values in (0, 1), got trained_betas[{i}] = {float(betas[i])!r}")
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":  # linear in sqrt(beta): latent diffusion's schedule
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = torch.tensor(_cosine_betas(n), dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule: unsupported {schedule!r}; supported: {', '.join(BETA_SCHEDULES)} "
                         "(or give trained_betas)")
    return betas


def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(s) = cos^2((s + 0.008)/1.008 pi/2) on s = k/n,
    beta_k = 1 - alpha_bar((k+1)/n) / alpha_bar(k/n), capped at max_beta (as diffusers does, in float64)."""
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return [min(1 - alpha_bar((k + 1) / n) / alpha_bar(k / n), max_beta) for k in range(n)]


def diffusers_sde(config) -> DiscreteVPSDE:
    """The :class:`DiscreteVPSDE` of a diffusers scheduler config (see :func:`diffusers_alphas_cumprod`)."""
    cfg = _config(config)
    ac = diffusers_alphas_cumprod(cfg)
    try:
        return DiscreteVPSDE(alphas_cumprod=ac)
    except ValueError as err:  # name what the user gave (the config's keys), not the derived alphas_cumprod
        given = ", ".join(f"{k}={cfg[k]!r}" for k in ("num_train_timesteps", "beta_schedule", "beta_start",
                                                        "beta_end") if k in cfg)
        given += ", trained_betas=[...]" if cfg.get("trained_betas") is not None else ""
        raise ValueError(f"scheduler config ({given or 'defaults'}): its schedule is unusable: {err}") from None


def _parameterization(config) -> str:
    p = _config(config).get("prediction_type", "epsilon")
    if p not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: unsupported {p!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[p]


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
def network_output(out, x: Tensor) -> Tensor:
    """The prediction tensor from a network's return value: a tensor, or a diffusers output's ``.sample``.

    A learned-variance network (``2 C`` output channels for ``C`` input channels, diffusers'
    ``variance_type='learned_range'``) returns the mean prediction first: its first ``C`` channels are used.
    """
    if not isinstance(out, Tensor):
        sample = getattr(out, "sample", None)
        if not isinstance(sample, Tensor):
            raise TypeError(f"the network returned {type(out).__name__}, not a tensor; a diffusers model returns "
                            "an output whose .sample is the prediction (keep return_dict=True), any other network "
                            "must return the prediction tensor (wrap it: lambda x, t: net(x, t)[0])")
        out = sample
    if out.ndim == x.ndim and out.ndim >= 2 and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
        out = out[:, : x.shape[1]]
    return out


def _snap(t: Tensor, rounding: str | None) -> Tensor:
    if rounding == "round":
        return torch.round(t)
    if rounding == "floor":
        return torch.floor(t + _FLOOR_SLACK)
    return t


def _rows(value: Tensor, batch: int, name: str) -> Tensor:
    """``value`` with ``batch`` rows: repeated whole when it has 1 row or a divisor of ``batch``
    (a guided call stacks [x, x], so per-sample conditioning repeats in the same order)."""
    if value.shape[0] == batch:
        return value
    if value.shape[0] >= 1 and batch % value.shape[0] == 0:
        return value.repeat(batch // value.shape[0], *([1] * (value.ndim - 1)))
    raise ValueError(f"{name}: {value.shape[0]} rows do not divide the batch of {batch}")


def _load(obj, scheduler):
    """(network, scheduler config, network config) from a pipeline, a folder or a module."""
    diffusers = _require_diffusers()
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isdir(path):
            raise ValueError(f"obj: {path!r} is not a folder (expected a pipeline saved with save_pretrained)")
        if os.path.isfile(os.path.join(path, "model_index.json")):
            index = _read_json(os.path.join(path, "model_index.json"), "obj")
            for part in ("unet", "transformer"):
                if isinstance(index.get(part), list) and index[part][-1] is not None:
                    _check_model_folder(os.path.join(path, part), part)
            if (scheduler is None and isinstance(index.get("scheduler"), list)
                    and not os.path.isdir(os.path.join(path, "scheduler"))):
                raise ValueError(f"obj: scheduler folder {os.path.join(path, 'scheduler')!r} is missing "
                                 "(model_index.json lists it); pass scheduler= or save the pipeline again")
            obj = _from_pretrained(diffusers.DiffusionPipeline.from_pretrained, path)
        elif os.path.isfile(os.path.join(path, "config.json")):
            name = _read_json(os.path.join(path, "config.json"), "obj").get("_class_name")
            cls = getattr(diffusers, str(name), None)
            if cls is None or not hasattr(cls, "from_pretrained"):
                raise ValueError(f"obj: {path}/config.json names {name!r}, not a diffusers model class")
            _check_model_folder(path, "model")
            obj = _from_pretrained(cls.from_pretrained, path)
            if scheduler is None and os.path.isfile(os.path.join(path, "scheduler_config.json")):
                scheduler = path
        else:
            raise ValueError(f"obj: no model in {path!r}: expected model_index.json (a pipeline saved with "
                             "save_pretrained) or config.json (a model saved with save_pretrained)")
    if isinstance(obj, diffusers.DiffusionPipeline):
        net = getattr(obj, "unet", None)
        if net is None:
            net = getattr(obj, "transformer", None)
        if net is None:
            raise ValueError(f"obj: the pipeline {type(obj).__name__} has no 'unet' or 'transformer' component "
                             f"(it has: {', '.join(sorted(obj.components))})")
        if scheduler is None:
            scheduler = getattr(obj, "scheduler", None)
            if scheduler is None:
                raise ValueError(f"obj: the pipeline {type(obj).__name__} has no scheduler; pass scheduler=")
    elif isinstance(obj, torch.nn.Module) or callable(obj):
        net = obj
    else:
        raise TypeError(f"obj: expected a diffusers pipeline, a folder, or a network module, got {type(obj).__name__}")
    if scheduler is None:
        raise ValueError("scheduler: a bare network needs its training schedule: pass scheduler= (a diffusers "
                         "scheduler, its config, or a folder with scheduler_config.json)")
    return net, _config(scheduler)


def from_diffusers(obj, scheduler=None, *, time_rounding: str | None = None, class_labels=None,
                   encoder_hidden_states: Tensor | None = None, guidance_scale: float | None = None,
                   null_class_label: int | None = None, negative_encoder_hidden_states: Tensor | None = None,
                   **options) -> tuple[ScoreModel, DiscreteVPSDE]:
    """A diffusers network as a :class:`ScoreModel` on the :class:`DiscreteVPSDE` of its scheduler.

    Args:
        obj: a ``UNet2DModel``, ``UNet2DConditionModel`` or any module ``net(x, timestep, ...)`` whose
            output is a tensor or has ``.sample``; a ``DiffusionPipeline`` (its ``unet`` or ``transformer``
            and its scheduler); or a local folder saved with ``save_pretrained`` (loaded with
            ``local_files_only=True``: nothing is downloaded).
        scheduler: the training schedule (a scheduler, its config, or a folder / ``scheduler_config.json``);
            default: the pipeline's. Its ``prediction_type`` sets the parameterisation.
        time_rounding: None (default) passes the network the fractional step ``N t - 1`` of scoresde's
            grids; ``'round'`` or ``'floor'`` snaps it to the integers a discretely trained network knows.
        class_labels: an int or a (B,) / (1,) tensor passed as ``class_labels=``.
        encoder_hidden_states: a (B, L, D) or (1, L, D) tensor passed as ``encoder_hidden_states=``.
        guidance_scale: classifier-free guidance through :func:`scoresde.guidance.classifier_free_guidance`
            (``out_null + w (out_cond - out_null)``): with ``class_labels`` it needs ``null_class_label``,
            with ``encoder_hidden_states`` it needs ``negative_encoder_hidden_states``.
        **options: further keyword arguments of every network call (e.g. ``added_cond_kwargs``).

    Returns ``(model, sde)``; the network runs in its own dtype, its output comes back in the state's.
    """
    if time_rounding not in TIME_ROUNDINGS:
        raise ValueError(f"time_rounding: unknown {time_rounding!r}; allowed: None, 'round', 'floor'")
    if class_labels is not None and encoder_hidden_states is not None and guidance_scale is not None:
        raise ValueError("guidance_scale: guide on class_labels or on encoder_hidden_states, not both")
    net, cfg = _load(obj, scheduler)
    sde = diffusers_sde(cfg)
    parameterization = _parameterization(cfg)
    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    net_dtype = params[0].dtype if params else None
    check_input = _input_check(net)
    class_labels = _checked_labels(net, class_labels, "class_labels")
    if null_class_label is not None:
        _checked_labels(net, null_class_label, "null_class_label")

    def call(x: Tensor, t: Tensor, **cond) -> Tensor:
        check_input(x)
        x_in = x if net_dtype is None else x.to(net_dtype)
        out = network_output(net(x_in, _snap(t, time_rounding), **cond, **options), x)
        return out.to(x.dtype)

    if guidance_scale is None:
        def fn(x: Tensor, t: Tensor) -> Tensor:
            cond = {}
            if class_labels is not None:
                cond["class_labels"] = _rows(class_labels.to(x.device), x.shape[0], "class_labels")
            if encoder_hidden_states is not None:
                cond["encoder_hidden_states"] = _rows(encoder_hidden_states.to(x.device), x.shape[0],
                                                      "encoder_hidden_states")
            return call(x, t, **cond)
        return ScoreModel(fn, sde, parameterization, time_input="discrete"), sde

    if class_labels is not None:
        if null_class_label is None:
            raise ValueError("null_class_label: classifier-free guidance on class_labels needs the label the network "
                             "was trained with for 'no label'")

        def labelled(x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
            return call(x, t, class_labels=labels)
        y = int(class_labels.reshape(-1)[0]) if class_labels.numel() == 1 else class_labels.flatten()
        guided = _guidance.classifier_free_guidance(labelled, sde, y, guidance_scale,
                                                    null_label=int(null_class_label),
                                                    parameterization=parameterization, time_input="discrete")
        return guided, sde
    if encoder_hidden_states is None or negative_encoder_hidden_states is None:
        raise ValueError("guidance_scale: needs class_labels with null_class_label, or encoder_hidden_states with "
                         "negative_encoder_hidden_states")
    cond_ehs, null_ehs = encoder_hidden_states, negative_encoder_hidden_states

    def prompted(x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        # label 0: the prompt, label 1: the negative prompt (the 'null label' of the guidance)
        b = x.shape[0]
        pick = (labels == 0).view(-1, *([1] * (cond_ehs.ndim - 1))).to(x.device)
        ehs = torch.where(pick, _rows(cond_ehs.to(x.device), b, "encoder_hidden_states"),
                          _rows(null_ehs.to(x.device), b, "negative_encoder_hidden_states"))
        return call(x, t, encoder_hidden_states=ehs)
    guided = _guidance.classifier_free_guidance(prompted, sde, 0, guidance_scale, null_label=1,
                                                parameterization=parameterization, time_input="discrete")
    return guided, sde


def _net_config(net) -> Mapping:
    cfg = getattr(net, "config", None)
    return cfg if isinstance(cfg, Mapping) else {}


def _input_check(net):
    """A shape check of the state against a diffusers network's config (Python ints only: no host sync)."""
    cfg = _net_config(net)
    channels, name = cfg.get("in_channels"), type(net).__name__
    if not isinstance(channels, int) or "sample_size" not in cfg:
        return lambda x: None

    def check(x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"x: {name} takes images (B, {channels}, H, W), got a state of shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"x: {name} takes {channels} channels (config in_channels), got a state of shape "
                             f"{tuple(x.shape)}")
    return check


def _checked_labels(net, labels, name: str):
    """Labels as a tensor, within the network's ``num_class_embeds`` when its config has one."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        if isinstance(labels, bool) or not isinstance(labels, int):
            raise TypeError(f"{name}: expected an int or a tensor of labels, got {type(labels).__name__}")
        labels = torch.tensor([labels])
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer labels, got a tensor of dtype {labels.dtype}")
    n_classes = _net_config(net).get("num_class_embeds")
    if isinstance(n_classes, int) and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{name}: labels must lie in 0..{n_classes - 1} ({type(net).__name__}'s "
                             f"num_class_embeds={n_classes}), got values in [{lo}, {hi}]")
    return labels


# ---------------------------------------------------------------------------------------------
# Grids: what a diffusers scheduler would do, as a scoresde grid
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusersGrid:
    """A diffusers scheduler's timesteps as a scoresde grid.

    ``times``: the float64 grid ``(timesteps + 1) / N`` (with ``1/N`` appended for ``final='sigma_min'``);
    ``final_denoise``: True for ``final='zero'``; ``timesteps``: the scheduler's distinct timesteps in order.
    ``kwargs()`` gives ``grid=`` and ``final_denoise=`` for :func:`scoresde.sample`.
    """

    times: Tensor
    final_denoise: bool
    timesteps: Tensor
    final: str
    spacing: str

    def kwargs(self) -> dict[str, Any]:
        return {"grid": self.times, "final_denoise": self.final_denoise}


SPACINGS = ("leading", "trailing", "linspace")
FINALS = ("zero", "sigma_min")
# the config key each scheduler family uses for its last noise level
_SIGMA_ZERO_KEY = {"DDIMScheduler": "set_alpha_to_one"}


def diffusers_grid(config, steps: int, spacing: str | None = None, final: str | None = None) -> DiffusersGrid:
    """The grid and final step a diffusers scheduler uses for ``steps`` inference steps, for scoresde.

    ``config``: a scheduler or its config (with ``_class_name``, e.g. ``DDIMScheduler``,
    ``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``, ``EulerDiscreteScheduler``,
    ``HeunDiscreteScheduler``). ``spacing`` overrides its ``timestep_spacing`` ('leading',
    'trailing', 'linspace'); ``final`` its last noise level: ``'zero'`` (``set_alpha_to_one=True``,
    ``final_sigmas_type='zero'``; Euler and Heun always) or ``'sigma_min'`` (``alphas_cumprod[0]``).
    The timesteps come from the scheduler's own ``set_timesteps`` (the rules differ between
    families: 'leading' is ``N // steps`` apart for DDIM, ``N // (steps + 1)`` for DPM-Solver);
    Heun's repeated timesteps count once. DDIM steps from timestep k to k - N // steps: where that
    is not the next listed timestep ('linspace') it is refused, and where its last step lands on a
    knot >= 0 (e.g. 'trailing' with N // steps - 1 as its last timestep) that knot ends the grid,
    whatever ``final`` says. Where the noise levels lie between the training knots (Karras, exponential
    or beta sigmas, Lu lambdas; Euler's and Heun's 'linspace' timesteps or log-linear sigmas) the grid is
    placed at diffusers' own sigmas and ``timesteps`` holds the (possibly fractional) network times diffusers
    calls there, which differ from ``N t - 1`` of the grid: :func:`diffusers_equivalent` says whether a
    model with ``time_rounding='round'`` reproduces them.
    """
    diffusers = _require_diffusers()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing: unknown {spacing!r}; allowed: {', '.join(SPACINGS)}")
    if final is not None and final not in FINALS:
        raise ValueError(f"final: unknown {final!r}; allowed: {', '.join(FINALS)}")
    cfg = _config(config)
    name = cfg.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ValueError(f"config: _class_name {name!r} is not a diffusers scheduler (pass the scheduler itself, "
                         "or its saved config, which names its class)")
    accepted = set(cls.from_config(cfg).config)
    overrides: dict[str, Any] = {}
    if spacing is not None:
        overrides["timestep_spacing"] = spacing
    if final is not None:
        if "set_alpha_to_one" in accepted:
            overrides["set_alpha_to_one"] = final == "zero"
        elif "final_sigmas_type" in accepted:
            overrides["final_sigmas_type"] = final
        elif final != "zero":
            raise ValueError(f"final: {name} always ends at sigma = 0; allowed: 'zero'")
    sched = cls.from_config({**cfg, **overrides})
    scfg = sched.config
    if any(scfg.get(k) for k in _SIGMA_OPTIONS) or (name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler") and (
            scfg.get("timestep_spacing") == "linspace" or scfg.get("interpolation_type", "linear") != "linear")):
        # noise levels between the training knots: the grid follows diffusers' sigmas, and ``timesteps`` are the
        # network times diffusers calls at each grid point (not N t - 1 of the grid: see diffusers_equivalent)
        times, final_zero, network = _sigma_grid(dict(scfg, _class_name=name), name, steps)
        return DiffusersGrid(times=times, final_denoise=final_zero, timesteps=network,
                             final="zero" if final_zero else "sigma_min", spacing=scfg.get("timestep_spacing", "leading"))
    sched.set_timesteps(steps)
    ts = sched.timesteps.to(torch.float64)
    keep = torch.ones_like(ts, dtype=torch.bool)
    keep[1:] = ts[1:] != ts[:-1]
    ts = ts[keep]
    n_train = sched.config.num_train_timesteps
    if "set_alpha_to_one" in accepted:
        final_used = "zero" if scfg.set_alpha_to_one else "sigma_min"
    else:
        final_used = scfg.get("final_sigmas_type", "zero") or "zero"
    times = (ts + 1) / n_train
    if name == "DDIMScheduler":
        # DDIM steps from timestep k to k - N // steps (diffusers' DDIMScheduler.step), not to the next listed one
        ratio = n_train // steps
        prev = ts - ratio
        if not torch.equal(prev[:-1], ts[1:]):
            raise ValueError(f"spacing: DDIMScheduler with timestep_spacing={scfg.timestep_spacing!r} steps from each "
                             f"timestep k to k - {ratio}, and with {steps} steps that is not the next timestep it "
                             f"lists ({ts.long().tolist()}), so no grid reproduces it; use a number of steps that "
                             f"divides {n_train}, or 'leading' spacing")
        if float(prev[-1]) >= 0:  # its last step lands on a listed knot, not on the final alpha
            times = torch.cat([times, ((prev[-1:] + 1) / n_train)])
            final_used = "sigma_min" if float(prev[-1]) == 0 else f"timestep {int(prev[-1])}"
    if final_used == "sigma_min" and float(times[-1]) > 1.5 / n_train:
        times = torch.cat([times, torch.tensor([1.0 / n_train], dtype=torch.float64)])
    return DiffusersGrid(times=times, final_denoise=final_used == "zero", timesteps=ts, final=final_used,
                         spacing=scfg.get("timestep_spacing", "leading"))


def _refuse(cfg: Mapping, name: str, key: str, default) -> None:
    value = cfg.get(key, default)
    if value != default:
        raise ValueError(f"{key}: {name} with {key}={value!r} has no scoresde equivalent here; supported: {default!r}")


# options that place the noise levels off the training knots (diffusers calls the network at the rounded
# timestep of each sigma): reproduced from the native sigmas, with the network time rounded
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


def _sigma_grid(cfg: Mapping, name: str, steps: int) -> tuple[Tensor, bool, Tensor]:
    """The grid of a native scheduler whose noise levels are not at knots: ``t`` with the VP frame's
    sigma/alpha equal to each native sigma (float64 of diffusers' float32 values), whether it ends with the
    step to sigma = 0, and the network timestep diffusers calls at each grid point (its own ``timesteps``)."""
    diffusers = _require_diffusers()
    sched = getattr(diffusers, name).from_config(dict(cfg))
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.to(torch.float64)
    timesteps = sched.timesteps.to(torch.float64)
    if name == "HeunDiscreteScheduler":  # its sigmas and timesteps repeat each interior level (two calls per step)
        keep = torch.ones_like(sigmas, dtype=torch.bool)
        keep[1:] = sigmas[1:] != sigmas[:-1]
        sigmas = sigmas[keep]
        keep = torch.ones_like(timesteps, dtype=torch.bool)
        keep[1:] = timesteps[1:] != timesteps[:-1]
        timesteps = timesteps[keep]
    # each call steps from sigmas[i] to sigmas[i + 1]: the run lands on sigmas[calls] (0: the data prediction)
    calls = timesteps.numel()
    final_zero = float(sigmas[calls]) == 0.0
    positive = sigmas[:calls] if final_zero else sigmas[: calls + 1]
    if not final_zero and float(positive[-1]) == float(positive[-2]):
        positive = positive[:-1]  # a last step from sigma_min to itself is the identity
    sde = diffusers_sde(cfg)
    times = sde.t_of_lam(-torch.log(positive)).clamp(max=sde.T)  # sigma_max's rounding may land 1e-9 past T
    return times, final_zero, timesteps[: times.numel()]


def diffusers_equivalent(scheduler, steps: int, *, time_rounding: str | None = None) -> dict[str, Any]:
    """``scoresde.sample`` keyword arguments (``method``, ``grid``, ``final_denoise`` and the sampler's
    options) that reproduce ``scheduler`` with ``steps`` inference steps on the same network and x_T.

    Supported: ``DDIMScheduler`` (eta = 0; ``clip_sample``, its default, clips the data prediction
    of every step and of the final one), ``DPMSolverMultistepScheduler`` (dpmsolver / dpmsolver++,
    thresholding), ``UniPCMultistepScheduler`` (thresholding), ``EulerDiscreteScheduler`` (Euler in
    sigma = exponential Euler in log-SNR = DDIM) and ``HeunDiscreteScheduler`` (Heun on every step,
    then its Euler step to sigma = 0, which is the final denoising). The last diffusers step to
    sigma = 0 is first order in every family; to ``sigma_min`` DPM-Solver lowers it below 15 steps and
    UniPC with ``lower_order_final`` always, which is scoresde's ``lower_order_final=True``.

    Karras, exponential and beta sigmas and ``use_lu_lambdas`` place the noise levels between the
    training timesteps while diffusers calls the network at the rounded timestep: the grid then follows
    the native sigmas, and the model must round its time too. Pass ``time_rounding='round'`` to say that
    it does (``from_diffusers(..., time_rounding='round')``); otherwise these are refused.
    ``ScoresdeScheduler.from_scheduler`` does both. Options with no equivalent (Euler's fractional
    'linspace' timesteps, DDIM's thresholding, ...) are refused by name: never a silent mismatch.
    """
    out = _equivalent(scheduler, steps)
    network_times = out.pop("network_times", None)
    cfg = _config(scheduler)
    used = ", ".join(k for k in _SIGMA_OPTIONS if cfg.get(k)) or "timestep_spacing/interpolation_type"
    if network_times is not None:
        sde = diffusers_sde(cfg)
        rounded = torch.round(sde.discrete_time(out["grid"][: network_times.numel()]))
        if not torch.equal(rounded, network_times):
            raise ValueError(f"{used}: {cfg.get('_class_name')} calls the network at timesteps "
                             f"{network_times.tolist()} for these noise levels, not at their rounded times "
                             f"{rounded.tolist()}, which a ScoreModel cannot do; ScoresdeScheduler.from_scheduler "
                             "reproduces it (it lists diffusers' timesteps)")
        needs = "round"
    else:
        needs = None
    if needs is not None and time_rounding != needs:
        raise ValueError(f"{used}: {cfg.get('_class_name')} calls the network at the rounded timestep of noise "
                         f"levels between training timesteps; build the model with from_diffusers(..., "
                         f"time_rounding='round') and pass time_rounding='round' here (or use "
                         "ScoresdeScheduler.from_scheduler), got time_rounding=" + repr(time_rounding))
    return out


def _equivalent(scheduler, steps: int) -> dict[str, Any]:
    """diffusers_equivalent's keyword arguments, plus ``network_times`` (diffusers' timestep at each grid
    point) when the noise levels are not at the training knots."""
    cfg = _config(scheduler)
    name = cfg.get("_class_name")
    supported = ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                 "HeunDiscreteScheduler")
    if name not in supported:
        raise ValueError(f"scheduler: no scoresde equivalent for {name!r}; supported: {', '.join(supported)}")
    for key in ("use_flow_sigmas", "rescale_betas_zero_snr"):
        _refuse(cfg, name, key, False)
    if cfg.get("timestep_type", "discrete") != "discrete":
        _refuse(cfg, name, "timestep_type", "discrete")
    sigma_options = [k for k in _SIGMA_OPTIONS if cfg.get(k)]
    if sigma_options and cfg.get("final_sigmas_type", "zero") != "zero":
        raise ValueError(f"final_sigmas_type: {name} with {sigma_options[0]} and final_sigmas_type="
                         f"{cfg['final_sigmas_type']!r} ends with a step from sigma_min to itself whose order "
                         "rules are not reproduced here; supported with these sigmas: 'zero'")
    if name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler") and (
            cfg.get("timestep_spacing") == "linspace" or cfg.get("interpolation_type", "linear") != "linear"):
        # fractional timesteps with interpolated sigmas, or log-linear sigmas: the noise levels lie between knots
        sigma_options.append("timestep_spacing" if cfg.get("timestep_spacing") == "linspace" else "interpolation_type")
    if sigma_options:
        times, final_denoise, network_times = _sigma_grid(cfg, name, steps)
        out: dict[str, Any] = {"grid": times, "final_denoise": final_denoise, "network_times": network_times}
        final = "zero" if final_denoise else "sigma_min"
    else:
        g = diffusers_grid(cfg, steps)
        out = {"grid": g.times, "final_denoise": g.final_denoise}
        final = g.final
    if name == "DDIMScheduler":
        _refuse(cfg, name, "thresholding", False)
        clip = bool(cfg.get("clip_sample", True))
        if clip and not out["final_denoise"]:
            raise ValueError("clip_sample: DDIMScheduler with set_alpha_to_one=False clips in its extra step to "
                             "alphas_cumprod[0] as well, which has no scoresde equivalent; use set_alpha_to_one=True "
                             "or clip_sample=False")
        opts = {"clip_sample": True, "clip_range": float(cfg.get("clip_sample_range", 1.0))} if clip else {}
        return {"method": "ddim", **out, "eta": 0.0, **opts}
    thresholding = {}
    if cfg.get("thresholding", False):
        thresholding = {"thresholding": True, "percentile": float(cfg.get("dynamic_thresholding_ratio", 0.995)),
                        "max_value": float(cfg.get("sample_max_value", 1.0))}
    if name == "DPMSolverMultistepScheduler":
        _refuse(cfg, name, "euler_at_final", False)
        algorithm = cfg.get("algorithm_type", "dpmsolver++")
        methods = {"dpmsolver++": "dpm_solver++", "dpmsolver": "dpm_solver"}
        if algorithm not in methods:
            raise ValueError(f"algorithm_type: {algorithm!r} has no scoresde equivalent; supported: "
                             f"{', '.join(methods)}")
        if thresholding and algorithm != "dpmsolver++":
            raise ValueError("thresholding: diffusers thresholds the data prediction of dpmsolver++ only; "
                             f"got algorithm_type={algorithm!r}")
        lower = bool(cfg.get("lower_order_final", True)) and final == "sigma_min" and steps < 15
        return {"method": methods[algorithm], **out, "order": cfg.get("solver_order", 2), "variant": "multistep",
                "solver_type": "dpmsolver" if cfg.get("solver_type", "midpoint") == "midpoint" else "taylor",
                "lower_order_final": lower, **thresholding}
    if name == "UniPCMultistepScheduler":
        _refuse(cfg, name, "disable_corrector", [])
        lower = bool(cfg.get("lower_order_final", True)) and final == "sigma_min"
        return {"method": "unipc", **out, "order": cfg.get("solver_order", 2), "variant": cfg.get("solver_type", "bh2"),
                "prediction": "data" if cfg.get("predict_x0", True) else "noise", "corrector": True,
                "final_corrector": False, "lower_order_final": lower, **thresholding}
    if thresholding:
        _refuse(cfg, name, "thresholding", False)
    if name == "EulerDiscreteScheduler":
        return {"method": "ddim", **out, "eta": 0.0}
    _refuse(cfg, name, "clip_sample", False)  # Heun's x0 clipping (a DDPMScheduler config carries True)
    # Heun's steps end at the last listed time; its Euler step to sigma = 0 is the final denoising
    return {"method": "heun", **out, "euler_last": False}


# ---------------------------------------------------------------------------------------------
# The command line's route to a saved pipeline
# ---------------------------------------------------------------------------------------------
def load_diffusers_model(path, *, device=None, dtype: torch.dtype | None = None, label: int | None = None) -> ScoreModel:
    """A pipeline (or model) folder saved with ``save_pretrained`` as a :class:`ScoreModel` for
    ``scoresde sample --diffusers PATH`` and ``scoresde nll --diffusers PATH``: the model of
    :func:`from_diffusers` with ``.net`` (the network, on ``device`` in ``dtype``), ``.event_shape``
    (``(in_channels, H, W)`` from its config) and ``.levels`` (None: diffusers records no data levels).
    ``label``: the class of a class-conditional network."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"--diffusers: expected a folder path, got {type(path).__name__}")
    net, cfg = _load(os.fspath(path), None)
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"--diffusers: {os.fspath(path)!r} holds no network module")
    net = net.to(device=device, dtype=dtype).eval()
    config = _net_config(net)
    size, channels = config.get("sample_size"), config.get("in_channels")
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"--diffusers: {type(net).__name__} in {os.fspath(path)!r} does not record its image shape "
                         "(config in_channels and sample_size)")
    if label is not None and not isinstance(config.get("num_class_embeds"), int):
        raise ValueError(f"--label: the network in {os.fspath(path)!r} is unconditional (no num_class_embeds); "
                         "leave --label out")
    model, _ = from_diffusers(net, cfg, class_labels=label)
    model.net = net
    model.event_shape = (channels, int(size[0]), int(size[1]))
    model.levels = None
    return model
