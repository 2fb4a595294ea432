"""`python -m fastgan`: the same as the `fastgan` command."""

import sys

from fastgan.cli import main

if __name__ == "__main__":
    sys.exit(main())
