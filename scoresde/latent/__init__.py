"""Latent diffusion (Rombach et al. 2022): an autoencoder, diffusion in its latent space, diffusers' latent pipelines.

* :mod:`.autoencoder`: a KL-regularised ``AutoencoderKL`` (diffusers) trained with EMA, atomic
  checkpoints and exact resume; its run folder records the latent scale and reconstruction errors.
* :mod:`.codec`: :class:`LatentCodec` (encode ``s * mu(x)``, decode ``D(z / s)``), the encoded data set
  a latent score model trains on, and the codec a latent run records.
* :mod:`.pipelines`: :func:`from_diffusers_latent` for saved diffusers latent pipelines (``vae/`` or ``vqvae/``).

diffusers is needed (``pip install -e .[diffusers]``); importing this package does not import it.
"""
from .autoencoder import AutoencoderConfig, AutoencoderTrainer, autoencoder_images, build_autoencoder, require_diffusers
from .codec import LatentCodec, latent_data_name, latent_dataset, load_autoencoder, run_codec
from .pipelines import from_diffusers_latent

__all__ = ["AutoencoderConfig", "AutoencoderTrainer", "autoencoder_images", "build_autoencoder", "require_diffusers",
           "LatentCodec", "latent_data_name", "latent_dataset", "load_autoencoder", "run_codec",
           "from_diffusers_latent"]
