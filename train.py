"""`python train.py --help`: see zoo/cli/train.py (also installed as `zoo-train`)."""

import sys

from zoo.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
