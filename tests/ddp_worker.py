"""Run under torchrun by test_training: trains a few steps, then each rank saves its parameters.

Buffers (BatchNorm running statistics) are rank-local between DDP's broadcasts and not compared.
"""

from __future__ import annotations

import os
import sys

from safetensors.torch import save_file

from lscindex.training import TrainConfig, fit

data, out = sys.argv[1], sys.argv[2]
result = fit(
    TrainConfig(
        data=data,
        out=out,
        model="test_resnet",
        epochs=1,
        batch_size=8,
        workers=0,
        max_steps=4,
        device="cpu",
    )
)
assert result.model is not None
weights = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
save_file(weights, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
