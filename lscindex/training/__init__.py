"""Training: LSC (fixed vector-system targets) or a cross-entropy baseline, on timm.

* :mod:`~lscindex.training.config` -- :class:`TrainConfig`, everything a run needs (config.json).
* :mod:`~lscindex.training.loop` -- :func:`fit`, the loop, read top to bottom.
* :mod:`~lscindex.training.progress` -- what a run reports: metrics, result, callbacks.
* :mod:`~lscindex.training.matching` -- the data assignment from the model's class means.
* :mod:`~lscindex.training.sampling` -- the seeded, resumable, rank-sharded sample order.
"""

from lscindex.training.config import TrainConfig
from lscindex.training.loop import fit
from lscindex.training.progress import EpochMetrics, TrainCallbacks, TrainResult

__all__ = ["EpochMetrics", "TrainCallbacks", "TrainConfig", "TrainResult", "fit"]
