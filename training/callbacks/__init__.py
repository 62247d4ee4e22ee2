"""Resource logging for training runs."""
from training.callbacks.logging_callback import PeakRSS, ResourceUsageCallback

__all__ = ["PeakRSS", "ResourceUsageCallback"]
