"""Training: objectives, dead-latent tracking, the trainer loop, checkpoints."""

from saekit.train.trainer import Trainer, train

__all__ = ["Trainer", "train"]
