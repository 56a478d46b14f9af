"""`python -m llaca.tune`: the training command line (`llaca.learn.command`), one process or many."""

import sys

from llaca.learn.command import main

if __name__ == "__main__":
    sys.exit(main())
