"""Run by tests/test_train_ddp.py under torch.distributed.run: each rank trains, then writes
its own final weights so the test can compare the ranks."""

import os
import sys

from safetensors.torch import save_file

from squeezenet.engine.train import TrainConfig, train

data, out = sys.argv[1], sys.argv[2]
cfg = TrainConfig(
    data, out, arch="squeezenet1_1", epochs=2, batch_size=8, micro_batch=2, image_size=64,
    lr=0.01, workers=0, progress=False,
)  # fmt: skip
result = train(cfg)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
save_file(state, os.path.join(os.path.dirname(out), f"rank{os.environ['RANK']}.safetensors"))
