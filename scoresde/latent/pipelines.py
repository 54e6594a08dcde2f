"""diffusers' latent pipelines in: the denoiser as a scoresde model on its latents, and the decoder.

A latent pipeline saved with ``save_pretrained`` keeps its autoencoder beside its denoiser: ``vae/``
(an ``AutoencoderKL``) or ``vqvae/`` (a ``VQModel``, as in ``LDMPipeline``); either config's
``scaling_factor`` is LDM's latent scale ``s``: the pipeline denoises ``s * mu(x)`` and decodes
``D(z / s)`` (``LDMPipeline`` divides by ``vqvae.config.scaling_factor`` before decoding, and the
``VQModel`` quantises in its ``decode``). :func:`from_diffusers_latent` returns the denoiser through
:func:`scoresde.interop.diffusers.from_diffusers` (any scoresde sampler then runs in the latent) and
a :class:`~scoresde.latent.codec.LatentCodec` that decodes its samples.

The folder is either a whole pipeline (``model_index.json``) or the bare components: ``unet/`` (or
``transformer/``), ``scheduler/`` and ``vae/`` or ``vqvae/``, each saved with ``save_pretrained``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .autoencoder import require_diffusers
from .codec import LatentCodec

__all__ = ["from_diffusers_latent"]

_DECODERS = {"vae": "AutoencoderKL", "vqvae": "VQModel"}


def _denoiser_folder(folder: Path) -> tuple[Path, Path | None]:
    if (folder / "model_index.json").is_file():
        return folder, None
    for part in ("unet", "transformer"):
        if (folder / part / "config.json").is_file():
            if not (folder / "scheduler").is_dir():
                raise ValueError(f"obj: {str(folder)!r} has {part}/ but no scheduler/ (save the pipeline's scheduler "
                                 "with save_pretrained, or pass scheduler=)")
            return folder / part, folder / "scheduler"
    raise ValueError(f"obj: {str(folder)!r} holds no model_index.json and no unet/ or transformer/ folder")


def from_diffusers_latent(folder: str | os.PathLike, scheduler=None, *, device=None, **options):
    """``(model, sde, codec)`` of a diffusers latent pipeline folder; see the module docstring.

    ``scheduler`` and ``**options`` go to :func:`~scoresde.interop.diffusers.from_diffusers`
    (``time_rounding``, ``class_labels``, guidance, ...). The latent shape is the denoiser's
    ``(in_channels, sample_size, sample_size)``; the image shape is the decoder's output for it.
    """
    diffusers = require_diffusers()
    from ..interop.diffusers import from_diffusers

    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder: expected a path to a saved latent pipeline, got {type(folder).__name__}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {str(folder)!r} is not a folder (expected a pipeline saved with save_pretrained)")
    parts = [p for p in _DECODERS if (folder / p / "config.json").is_file()]
    if not parts:
        raise ValueError(f"folder: {str(folder)!r} has no vae/ (AutoencoderKL) or vqvae/ (VQModel) folder: not a "
                         "latent pipeline; use scoresde.interop.from_diffusers for pixel-space pipelines")
    part = parts[0]
    cls_name = _DECODERS[part]
    named = json.loads((folder / part / "config.json").read_text()).get("_class_name")
    if named != cls_name:
        raise ValueError(f"folder: {part}/config.json names {named!r}; expected {cls_name}")
    try:
        decoder = getattr(diffusers, cls_name).from_pretrained(folder / part, local_files_only=True,
                                                                  low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"folder: cannot load {str(folder / part)!r} ({type(err).__name__}); is a file truncated "
                         "or missing? Save it again with save_pretrained") from None
    source, default_scheduler = _denoiser_folder(folder)
    model, sde = from_diffusers(str(source), scheduler if scheduler is not None else
                                (None if default_scheduler is None else str(default_scheduler)), **options)
    net_cfg = _denoiser_config(source)
    size = net_cfg.get("sample_size")
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    latent_shape = (int(net_cfg["in_channels"]), *map(int, size))
    f = 2 ** (len(decoder.config.block_out_channels) - 1)
    image_shape = (int(decoder.config.out_channels), latent_shape[1] * f, latent_shape[2] * f)
    codec = LatentCodec(decoder, float(decoder.config.scaling_factor), image_shape, latent_shape)
    if device is not None:
        codec = codec.to(device)
    return model, sde, codec


def _denoiser_config(source: Path) -> dict:
    if (source / "model_index.json").is_file():
        for part in ("unet", "transformer"):
            if (source / part / "config.json").is_file():
                return json.loads((source / part / "config.json").read_text())
        raise ValueError(f"obj: {str(source)!r} has no unet/ or transformer/ config")
    return json.loads((source / "config.json").read_text())
