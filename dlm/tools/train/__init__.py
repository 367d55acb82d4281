"""Training of the embedded demo model: a tiny masked-diffusion model on the synthetic tasks of
:mod:`dlm.tools.tasks`, with the LLaDA SFT objective (Nie et al., 2025), saved in the LLaDA checkpoint layout."""

from dlm.tools.train.checkpoint import save_llada_checkpoint
from dlm.tools.train.loop import TrainConfig, TrainResult, train, train_and_save

__all__ = ["TrainConfig", "TrainResult", "save_llada_checkpoint", "train", "train_and_save"]
