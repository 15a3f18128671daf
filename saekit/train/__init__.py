"""Training: objectives, dead-latent tracking, the trainer loop, checkpoints, resume rules."""

from saekit.train.resume import SAFE_RESUME_KEYS, resume_config
from saekit.train.trainer import Trainer, train

__all__ = ["SAFE_RESUME_KEYS", "Trainer", "resume_config", "train"]
