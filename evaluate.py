"""`python evaluate.py --help`: see zoo/cli/evaluate.py (also installed as `zoo-evaluate`)."""

import sys

from zoo.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
