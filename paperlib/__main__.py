"""``python -m paperlib`` -- the same as the ``paperlib`` console script (works under ``torchrun -m``)."""

import sys

from paperlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
