r"""A KL-regularised autoencoder for latent diffusion (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.1 and App. G), trained with EMA, atomic checkpoints
and exact resume.

The encoder maps an image ``x`` ``(C, H, W)`` to a diagonal Gaussian posterior
``q(z | x) = N(mu(x), diag s(x)^2)`` on a latent ``(c, H/f, W/f)`` (``f = 2^(len(channels) - 1)``),
the decoder maps a latent back to an image. One training step draws a batch, samples
``z = mu + s * eps`` (eps from the run's generator) and minimises

.. math::  L = \tfrac{1}{D} \lVert D(z) - x \rVert^2
              + \beta \, \tfrac{1}{D} \mathrm{KL}\big(q(z | x) \,\Vert\, N(0, I)\big),

both per pixel (``D`` pixels per image); LDM's "KL-reg" keeps ``beta`` tiny so that the latent is
barely regularised and the reconstruction stays sharp (LDM also adds a perceptual and an adversarial
term, which the 32x32 digits do not need). The architecture is diffusers' ``AutoencoderKL`` from a
small config, so a trained run loads in diffusers as well (``AutoencoderKL.from_pretrained(RUN/vae)``).

The latent scale (LDM, Sec. 4.3.2 and App. D.1): the diffusion model is trained on ``scale * mu(x)``
with ``scale = 1 / std(mu(x))`` over the training set (every element pooled), so the latents have
unit variance like the prior of the SDE. It is written into the saved ``AutoencoderKL`` config as
``scaling_factor`` (diffusers' name for it) and into ``autoencoder.json`` together with the
reconstruction errors.

A run folder (``AutoencoderTrainer(config, out)``) holds ``checkpoint.pt`` (weights, EMA, optimiser,
step, generator state: resuming gives bit-identical weights), and after training ``autoencoder.json``
(the config, the scale factor, reconstruction errors) and ``vae/`` (the EMA weights as a diffusers
model folder: ``config.json`` and ``diffusion_pytorch_model.safetensors``). Every file is written to
a temporary file and renamed into place.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .._files import atomic_write, save_tensor, save_text
from ..images.datasets import ImageData, load_images

__all__ = ["AutoencoderConfig", "AutoencoderTrainer", "require_diffusers", "build_autoencoder", "autoencoder_images",
           "AE_CHECKPOINT", "AE_RECORD", "VAE_FOLDER"]

AE_CHECKPOINT = "checkpoint.pt"
AE_RECORD = "autoencoder.json"
VAE_FOLDER = "vae"
_FORMAT = "scoresde-autoencoder-1"
_CKPT_KEYS = frozenset({"format", "step", "config", "model", "ema", "optimizer", "generator"})


def require_diffusers():
    """diffusers, or an ImportError saying how to install it (latent diffusion builds on its AutoencoderKL)."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - CI installs the extra
        raise ImportError("latent diffusion needs diffusers (its AutoencoderKL): pip install -e .[diffusers] "
                          "(or pip install 'scoresde[diffusers]')") from err
    return diffusers


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that defines an autoencoder run.

    ``data`` (an image set name such as ``digits``, an array file or an image folder; see
    :func:`scoresde.images.datasets.load_images`) is resized to ``image_size`` x ``image_size``
    (bilinear; the 8x8 digits become 32x32). ``channels``: the encoder's block widths, one 2x
    down-sampling between consecutive blocks, so the latent is ``(latent_channels, S/f, S/f)`` with
    ``f = 2^(len(channels) - 1)``; ``norm_groups`` must divide every width. ``kl_weight`` is beta above.
    """

    data: str = "digits"
    image_size: int = 32
    latent_channels: int = 4
    channels: tuple = (16, 32, 32)
    layers_per_block: int = 1
    norm_groups: int = 8
    kl_weight: float = 1e-4
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.99
    seed: int = 0
    ckpt_every: int = 100

    def __post_init__(self):
        if not isinstance(self.data, str) or not self.data:
            raise TypeError(f"data: expected an image set name, file or folder (a string), got {self.data!r}")
        object.__setattr__(self, "channels", tuple(self.channels) if isinstance(self.channels, (list, tuple))
                           else self.channels)
        for name in ("image_size", "latent_channels", "layers_per_block", "norm_groups", "steps", "batch_size",
                     "ckpt_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        if (not isinstance(self.channels, tuple) or not self.channels
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels)):
            raise ValueError(f"channels: expected a non-empty list of positive integers, got {self.channels!r}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups: {self.norm_groups} does not divide the channel widths {bad}; "
                             "choose a divisor of every width in channels")
        factor = 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size: {self.image_size} is not divisible by the down-sampling factor {factor} "
                             f"of {len(self.channels)} blocks")
        for name, lo_ok, what in (("kl_weight", lambda v: v >= 0, ">= 0"), ("lr", lambda v: v > 0, "> 0"),
                                  ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo_ok(v):
                raise ValueError(f"{name}: expected a number {what}, got {v!r}")

    @property
    def factor(self) -> int:
        """The spatial down-sampling factor ``f``."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"autoencoder config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def build_autoencoder(config: AutoencoderConfig, in_channels: int, scaling_factor: float = 1.0) -> nn.Module:
    """diffusers' ``AutoencoderKL`` of ``config`` for images with ``in_channels`` channels (no attention in the
    middle block: at 8x8 it costs more than it gives)."""
    diffusers = require_diffusers()
    n = len(config.channels)
    return diffusers.AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(config.channels),
        layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups, sample_size=config.image_size, scaling_factor=float(scaling_factor),
        mid_block_add_attention=False)


def autoencoder_images(data: str, image_size: int, split: str | None = None) -> ImageData:
    """The images of ``data`` at ``image_size`` x ``image_size``: a folder is resized by its reader, a set or
    array of another size by bilinear interpolation (which keeps values in [-1, 1]: convex combinations).
    ``split='test'`` reads ``digits_test`` for ``digits``. The grey levels are dropped (None) when resized."""
    name = "digits_test" if split == "test" and data == "digits" else data
    images = load_images(name, image_size if Path(name).is_dir() else None)
    x = images.x
    if x.ndim != 4:
        raise ValueError(f"data: {data!r} holds vectors of shape {tuple(x.shape[1:])}, not images (C, H, W)")
    if x.shape[-2:] == (image_size, image_size):
        return images
    x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ImageData(x, images.y, None, f"{images.name}@{image_size}")


def _check_ckpt(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"checkpoint: {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: not loadable
        raise ValueError(f"checkpoint: {str(path)!r} is corrupt or not a torch checkpoint "
                         f"({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT or set(ckpt) != _CKPT_KEYS:
        raise ValueError(f"checkpoint: {str(path)!r} is not a scoresde autoencoder checkpoint ({_FORMAT})")
    return ckpt


class AutoencoderTrainer:
    """Train an :func:`build_autoencoder` on ``config.data``; see the module docstring.

    Args:
        config: the run's :class:`AutoencoderConfig`.
        out: the run folder; None trains without writing.
        resume: continue from ``out/checkpoint.pt`` (the saved config must equal ``config`` except ``steps``).
        images: training images ``(N, C, S, S)`` in [-1, 1] overriding ``config.data`` (which then only names them).
    """

    def __init__(self, config: AutoencoderConfig, out: str | Path | None = None, *, resume: bool = False,
                 images: Tensor | None = None):
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config: expected an AutoencoderConfig, got {type(config).__name__}")
        require_diffusers()  # before any work
        self.config = config
        self.out = None if out is None else Path(out)
        if resume and self.out is None:
            raise ValueError("resume: needs the run folder `out`")
        if images is None:
            images = autoencoder_images(config.data, config.image_size).x
        if images.ndim != 4 or images.shape[-2:] != (config.image_size, config.image_size):
            raise ValueError(f"images: expected (N, C, {config.image_size}, {config.image_size}), "
                             f"got {tuple(images.shape)}")
        self.images = images.float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.vae = build_autoencoder(config, self.images.shape[1])
        self.ema = AveragedModel(self.vae, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=config.lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[tuple[int, float, float]] = []
        if resume:
            self._restore(_check_ckpt(self.out / AE_CHECKPOINT))
        elif self.out is not None and (self.out / AE_CHECKPOINT).exists():
            raise ValueError(f"out: {str(self.out)!r} already holds an autoencoder checkpoint; resume it (--resume) "
                             "or choose another folder")

    # ----- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": _FORMAT, "step": self.step, "config": self.config.to_dict(),
                "model": self.vae.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def _restore(self, ckpt: dict) -> None:
        saved = AutoencoderConfig.from_dict(ckpt["config"]).to_dict()
        now = self.config.to_dict()
        diff = {k: (saved[k], now[k]) for k in saved if k not in ("steps", "ckpt_every") and saved[k] != now[k]}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"config: the autoencoder run to resume was trained with a different config ({lines})")
        self.vae.load_state_dict(ckpt["model"], strict=True)
        self.ema.load_state_dict(ckpt["ema"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["generator"])
        self.step = int(ckpt["step"])

    def save_checkpoint(self) -> Path | None:
        if self.out is None:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        return save_tensor(self.state_dict(), self.out / AE_CHECKPOINT)

    # ----- training ------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One AdamW step on the per-pixel reconstruction error plus ``kl_weight`` times the per-pixel KL."""
        cfg = self.config
        idx = torch.randint(0, self.images.shape[0], (cfg.batch_size,), generator=self.generator)
        x = self.images[idx]
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=self.generator)
        recon = self.vae.decode(z).sample
        pixels = x[0].numel()
        rec = (recon - x).square().mean()
        kl = post.kl().mean() / pixels
        loss = rec + cfg.kl_weight * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update_parameters(self.vae)
        self.step += 1
        return float(rec.detach()), float(kl.detach())

    def train(self, steps: int | None = None, *, progress: bool = False) -> dict | None:
        """Train to ``steps`` (default ``config.steps``) total steps, checkpointing every ``ckpt_every``; then
        measure and save the EMA autoencoder (:meth:`finish`) and return its record."""
        target = self.config.steps if steps is None else int(steps)
        if target < self.step:
            raise ValueError(f"steps: the run is already at step {self.step}, asked to train to {target}")
        from tqdm.auto import tqdm

        self.vae.train()
        with tqdm(total=target, initial=self.step, desc="autoencoder", disable=not progress) as bar:
            while self.step < target:
                rec, kl = self.train_step()
                self.losses.append((self.step, rec, kl))
                if not math.isfinite(rec):
                    raise FloatingPointError(f"train: non-finite reconstruction loss at step {self.step}; lower lr")
                if self.step % self.config.ckpt_every == 0 or self.step == target:
                    self.save_checkpoint()
                bar.update(1)
        return self.finish()

    def ema_autoencoder(self) -> nn.Module:
        return self.ema.module.eval()

    @torch.no_grad()
    def finish(self) -> dict:
        """The record of the EMA autoencoder: its scale factor (1 / std of the training latents' posterior
        means) and mean squared reconstruction errors (train, and test when ``data`` is digits); saved with
        the weights as ``vae/`` and ``autoencoder.json`` when the run has a folder."""
        vae = self.ema_autoencoder()
        mu_train, rec_train = _encode_reconstruct(vae, self.images)
        record = {"format": _FORMAT, "step": self.step, "config": self.config.to_dict(),
                  "scale_factor": 1.0 / float(mu_train.double().std()),
                  "latent_shape": list(mu_train.shape[1:]), "image_shape": list(self.images.shape[1:]),
                  "recon_mse_train": float((rec_train - self.images).square().mean())}
        if self.config.data == "digits":
            test = autoencoder_images("digits", self.config.image_size, split="test").x
            record["recon_mse_test"] = float((_encode_reconstruct(vae, test)[1] - test).square().mean())
        if self.out is not None:
            save_autoencoder_folder(vae, record, self.out)
        return record


def _encode_reconstruct(vae, x: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    mus, recs = [], []
    for chunk in x.split(batch_size):
        mu = vae.encode(chunk).latent_dist.mean
        mus.append(mu)
        recs.append(vae.decode(mu).sample)
    return torch.cat(mus), torch.cat(recs)


def save_autoencoder_folder(vae, record: dict, out: str | Path) -> Path:
    """Write ``out/vae/`` (a diffusers model folder with ``scaling_factor`` set) and ``out/autoencoder.json``,
    each file atomically; ``autoencoder.json`` last, so a run with a record always has its weights."""
    from safetensors.torch import save as save_safetensors

    out = Path(out)
    folder = out / VAE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    vae.register_to_config(scaling_factor=record["scale_factor"])
    state = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    blob = save_safetensors(state, metadata={"format": "pt"})
    atomic_write(folder / "diffusion_pytorch_model.safetensors", lambda fh: fh.write(blob))
    save_text(vae.to_json_string(), folder / "config.json")
    save_text(json.dumps(record, indent=2) + "\n", out / AE_RECORD)
    return out
