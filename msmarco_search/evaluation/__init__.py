"""Scoring retrievers: metrics, tasks, the evaluation of several systems, validation during training."""
