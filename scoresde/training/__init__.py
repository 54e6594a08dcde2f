"""Training score networks, split by job.

* :mod:`.data`: the data sources (:class:`ToyData`, :class:`TensorData`, :func:`make_data`);
* :mod:`.checkpoints`: atomic checkpoint files, strict loading, the random states of an exact resume;
* :mod:`.spec`: the network's record in a checkpoint and the network or score model rebuilt from it
  (:func:`net_spec`, :func:`build_from_spec`, :func:`load_model`);
* :mod:`.trainer`: the denoising score-matching :class:`Trainer` (AdamW, warm-up, clipping, EMA, DDP).
"""
from .checkpoints import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, load_checkpoint
from .data import TensorData, ToyData, make_data
from .device import resolve_device
from .spec import build_from_spec, load_model, net_spec
from .trainer import StepRecord, Trainer

__all__ = ["Trainer", "StepRecord", "TensorData", "ToyData", "make_data", "load_checkpoint", "load_model", "net_spec",
           "build_from_spec", "resolve_device", "CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME"]
