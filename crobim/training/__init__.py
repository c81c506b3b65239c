"""Distributed training on Ray Train (PIPELINE.md §7): config, Ray Data input, per-worker loop,
checkpoints (safetensors + JSON), distributed validation and export of the best model."""

from crobim.training.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
