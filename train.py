"""`python train.py --help`: see zoo/cli/train.py (also installed as `zoo-train`)."""

import os
import signal
import sys

# SIGINT and SIGTERM from the first instruction on: until the loop takes them over (to save and
# stop), exit at once with 128 + signum; nothing is half-written (the workdir's files are renamed
# into place), and the kernel releases the workdir lock
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

from zoo.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
