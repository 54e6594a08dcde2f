"""``scoresde autoencoder``: train the KL-regularised autoencoder of latent diffusion (:mod:`scoresde.latent`).

The run folder holds ``checkpoint.pt`` (exact resume with ``--resume``), ``autoencoder.json`` (the latent
scale factor and reconstruction errors) and ``vae/`` (a diffusers ``AutoencoderKL`` folder). Then
``scoresde train --latent RUN ...`` trains a score model on the encoded images and ``scoresde sample``
decodes its samples.
"""
from __future__ import annotations

import argparse
import dataclasses

from ._paths import check_output


def _channels(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 16,32,32, got {text!r}") from None
    return values


def register(sub: argparse._SubParsersAction) -> None:
    from ..latent.autoencoder import AutoencoderConfig

    p = sub.add_parser("autoencoder", help="train a KL autoencoder for latent diffusion (scoresde train --latent)",
                       description="Train diffusers' AutoencoderKL on images resized to --image-size; report the "
                                   "reconstruction error and the latent scale factor.")
    p.add_argument("--out", required=True, help="run folder (created if needed)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    helps = {"data": "image set (digits), .pt/.npy array or folder of images",
             "channels": "encoder block widths, comma-separated (one 2x down-sampling between blocks)",
             "kl_weight": "weight of the per-pixel KL term"}
    for f in dataclasses.fields(AutoencoderConfig):
        typ = {"int": int, "float": float, "str": str}.get(str(f.type), _channels)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, default=None, help=helps.get(f.name))
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..latent.autoencoder import AE_CHECKPOINT, AutoencoderConfig, AutoencoderTrainer, _check_ckpt

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AutoencoderConfig)
             if getattr(args, f.name) is not None}
    check_output(args.out, "--out", kind="dir")
    if args.resume:
        saved = _check_ckpt(Path(args.out) / AE_CHECKPOINT)["config"]  # flags given now override it
        cfg = AutoencoderConfig.from_dict({**saved, **given})
    else:
        cfg = AutoencoderConfig(**given)
    trainer = AutoencoderTrainer(cfg, args.out, resume=args.resume)
    start = trainer.step
    record = trainer.train(progress=args.progress)
    test = f", test {record['recon_mse_test']:.4g}" if "recon_mse_test" in record else ""
    print(f"trained steps {start} -> {trainer.step}; latent {tuple(record['latent_shape'])}, scale factor "
          f"{record['scale_factor']:.4g}; reconstruction MSE train {record['recon_mse_train']:.4g}{test}; "
          f"saved in {args.out}")
    return 0
