r"""The bridge between images and latents: encode a data set for training, decode samples for viewing.

A :class:`LatentCodec` holds a (frozen) autoencoder and the latent scale ``s`` of LDM (Rombach et al.
2022, Sec. 4.3.2): the diffusion model lives on ``z = s * mu(x)`` (the posterior mean, so the encoded
data set is deterministic), and a sample ``z`` is decoded as ``D(z / s)``. Every sampler, the
likelihood and the studies run unchanged on the latents ``(B, c, h, w)``; only the last step decodes.

Latent runs of ``scoresde train --latent AE_RUN`` record their autoencoder in the checkpoint's config
as ``data = 'latent:<absolute AE_RUN>'`` (:func:`latent_data_name`), so ``scoresde sample`` finds the
decoder from the checkpoint alone (:func:`run_codec`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .autoencoder import AE_RECORD, VAE_FOLDER, autoencoder_images, require_diffusers

__all__ = ["LatentCodec", "load_autoencoder", "latent_dataset", "latent_training_data", "latent_data_name", "run_codec", "LATENT_PREFIX"]

LATENT_PREFIX = "latent:"


class LatentCodec(nn.Module):
    """An autoencoder with its latent scale: ``encode(x) = s * mu(x)``, ``decode(z) = D(z / s)``.

    ``vae``: a diffusers ``AutoencoderKL`` (posterior mean taken) or ``VQModel`` (decoded with its
    quantiser, as diffusers' LDMPipeline does); ``scale_factor``: ``s``; ``image_shape`` /
    ``latent_shape``: one sample's shapes; ``data``: the image set it was trained on (or None).
    """

    def __init__(self, vae: nn.Module, scale_factor: float, image_shape, latent_shape, data: str | None = None):
        super().__init__()
        if not (isinstance(scale_factor, (int, float)) and not isinstance(scale_factor, bool)
                and 0 < scale_factor < float("inf")):
            raise ValueError(f"scale_factor: expected a positive finite number, got {scale_factor!r}")
        self.vae = vae.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.image_shape = tuple(int(n) for n in image_shape)
        self.latent_shape = tuple(int(n) for n in latent_shape)
        self.data = data

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Images ``(B, *image_shape)`` in [-1, 1] to scaled latents ``(B, *latent_shape)``."""
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        out = []
        for chunk in x.split(batch_size):
            enc = self.vae.encode(chunk)
            mu = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
            out.append(mu * self.scale_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: Tensor, batch_size: int = 256) -> Tensor:
        """Scaled latents ``(B, *latent_shape)`` to images ``(B, *image_shape)`` (not clipped)."""
        if z.shape[1:] != self.latent_shape:
            raise ValueError(f"z: expected latents of shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(z.shape)}")
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.decode(chunk.to(dtype) / self.scale_factor).sample.to(z.dtype)
               for chunk in z.split(batch_size)]
        return torch.cat(out)


def _record(path: Path, what: str = "latent") -> dict:
    if not path.exists():
        raise ValueError(f"{what}: autoencoder run {str(path)!r} does not exist; train one with "
                         f"scoresde autoencoder --out {path}")
    if not path.is_dir():
        raise ValueError(f"{what}: {str(path)!r} is a file; expected an autoencoder run folder "
                         "(scoresde autoencoder --out FOLDER)")
    file = path / AE_RECORD
    if not file.is_file():
        raise ValueError(f"{what}: {str(path)!r} is not a finished autoencoder run (no {AE_RECORD}); train it with "
                         f"scoresde autoencoder --out {path}")
    try:
        record = json.loads(file.read_text())
        float(record["scale_factor"])
        tuple(record["image_shape"]), tuple(record["latent_shape"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{what}: {str(file)!r} is corrupt ({type(err).__name__}: {err}); train the autoencoder "
                         "again") from None
    if not (path / VAE_FOLDER / "config.json").is_file():
        raise ValueError(f"{what}: {str(path)!r} has no {VAE_FOLDER}/config.json; train the autoencoder again")
    return record


def load_autoencoder(path: str | Path, device=None, *, what: str = "latent") -> LatentCodec:
    """The :class:`LatentCodec` of an autoencoder run folder (``scoresde autoencoder --out PATH``); errors name ``what``."""
    diffusers = require_diffusers()
    path = Path(path)
    record = _record(path, what)
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(path / VAE_FOLDER, local_files_only=True,
                                                         low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what}: cannot load {str(path / VAE_FOLDER)!r} ({type(err).__name__}: {first}); "
                         "train the autoencoder again") from None
    codec = LatentCodec(vae, float(record["scale_factor"]), record["image_shape"], record["latent_shape"],
                        record.get("config", {}).get("data"))
    codec.record = record
    return codec.to("cpu" if device is None else device)


def latent_dataset(codec: LatentCodec, data: str | None = None, *, labels: bool = False, image_size=None):
    """A :class:`scoresde.training.TensorData` of the encoded training images of ``data`` (default: the set the
    autoencoder was trained on), with their labels when ``labels``; its ``std()`` is about 1 by construction."""
    from ..training import TensorData

    data = codec.data if data is None else data
    if data is None:
        raise ValueError("data: the autoencoder records no data set; name one")
    images = autoencoder_images(data, codec.image_shape[-1] if image_size is None else image_size)
    z = codec.encode(images.x)
    return TensorData(z, images.y, labels, None, f"latent:{images.name}")


def latent_data_name(ae_run: str | Path) -> str:
    """The ``TrainConfig.data`` of a latent run: ``'latent:'`` and the autoencoder run's absolute path."""
    return LATENT_PREFIX + str(Path(ae_run).resolve())


def latent_training_data(config, ae_run: str | Path | None = None, *, what: str = "--latent"):
    """``(config with data='latent:<absolute AE_RUN>', the encoded data set)`` of a latent run: from ``ae_run`` for
    a new run, or from the run's own ``config.data`` (resume). Errors name ``what`` and the folder."""
    if ae_run is not None:
        if not str(ae_run):
            raise ValueError(f"{what}: expected an autoencoder run folder, got an empty path")
        name = latent_data_name(ae_run)
    elif isinstance(config.data, str) and config.data.startswith(LATENT_PREFIX):
        name = config.data
    else:
        raise ValueError(f"{what}: no autoencoder run given and the run records none")
    codec = load_autoencoder(name[len(LATENT_PREFIX):], what=what)
    if config.image_size is not None:
        raise ValueError(f"--image-size: {config.image_size} given for a latent run; the autoencoder fixes the "
                         f"image size ({codec.image_shape[-1]})")
    return config.replace(data=name), latent_dataset(codec, labels=config.conditional)


def run_codec(data_name: str, device=None) -> LatentCodec | None:
    """The codec a run's ``config.data`` records (None for a pixel-space run)."""
    if not isinstance(data_name, str) or not data_name.startswith(LATENT_PREFIX):
        return None
    return load_autoencoder(data_name[len(LATENT_PREFIX):], device, what="--ckpt: the run's autoencoder")
