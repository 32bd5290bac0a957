"""The experiment runner: configs to trained, checkpointed, logged runs (``seqzoo train``)."""

from seqzoo.runner.evaluate import evaluate_run
from seqzoo.runner.loop import TrainingDiverged, train
from seqzoo.runner.memory import OutOfMemory
from seqzoo.runner.signals import RunInterrupted

__all__ = ["OutOfMemory", "RunInterrupted", "TrainingDiverged", "evaluate_run", "train"]
