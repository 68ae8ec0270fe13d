"""`rlhfkit` under accelerate's FSDP2 on CPU processes (gloo), for the tests.

accelerate 1.15 turns FSDP on only for GPU process groups, though torch's FSDP2 runs on gloo. Started by
`accelerate launch --config_file configs/accelerate/fsdp.yaml`, which sets the FSDP environment, this turns
the CPU run accelerate would make into the FSDP run it makes on GPUs, its plugin read from that environment.
Everything after is rlhfkit's and accelerate's own code path.
"""

import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from_environment = accelerate.state.AcceleratorState.__init__


def init(self, *args, **kwargs):
    from_environment(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables


accelerate.state.AcceleratorState.__init__ = init

from rlhfkit.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
