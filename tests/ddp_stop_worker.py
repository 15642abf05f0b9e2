"""Run under torchrun by test_training: rank 1 alone receives SIGTERM during training.

Each rank writes what it ended with to ``<out>/rank<R>.txt``: the Preempted message (which names
the global step it stopped at) or "finished".
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from lscindex.errors import Preempted
from lscindex.training import TrainConfig, fit

data, out, resume = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "resume"
rank = int(os.environ["RANK"])


def signal_rank_1_once_training() -> None:
    """SIGTERM to this process once fit has installed its handler and trained a little."""
    while signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        time.sleep(0.01)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


if rank == 1 and not resume:
    threading.Thread(target=signal_rank_1_once_training, daemon=True).start()
config = TrainConfig(
    data=data, out=str(out), model="test_resnet", epochs=6, batch_size=8, workers=0, device="cpu"
)
try:
    fit(config, resume=resume)
    ended = "finished"
except Preempted as exc:
    ended = str(exc)
(out.parent / f"rank{rank}.txt").write_text(ended)
