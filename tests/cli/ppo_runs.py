"""Several `rlhfkit` runs in one launch, for the tests: `python ppo_runs.py JSON`, JSON a list of argument
lists. The start-up (imports, the process group under torchrun) is paid once; the group is left at the end.
Every run goes through `rlhfkit.cli.main` as from the command line."""

import json
import sys

import rlhfkit.cli as cli
from rlhfkit.runtime.distributed import finish

cli.finish = lambda: None  # one process group for every run
status = 0
for args in json.loads(sys.argv[1]):
    status = status or cli.main(args)
finish()
sys.exit(status)
