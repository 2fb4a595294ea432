"""`python -m fastgan`: the same as the `fastgan` command."""

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from fastgan.cli import main

if __name__ == "__main__":
    # Under torchrun, a rank's uncaught error goes into torchrun's failure summary
    sys.exit(record(main)())
