"""`python benchmark.py --help`: see zoo/bench/cli.py (the scaling benchmark)."""

import sys

from zoo.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
