"""`python -m llaca.worker`: the learning worker as its own process (`llaca.worker.cli`)."""

import sys

from llaca.worker.cli import main

sys.exit(main())
