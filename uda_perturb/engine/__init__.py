"""Training loop, checkpoints, distributed helpers and evaluation."""
from .evaluate import evaluate, predict_logits
from .trainer import Trainer, TrainingInterrupted, build_model

__all__ = ["Trainer", "TrainingInterrupted", "build_model", "evaluate", "predict_logits"]
