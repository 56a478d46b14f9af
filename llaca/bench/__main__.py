"""`python -m llaca.bench`: the continual benchmark's command line (`llaca.bench.cli`)."""

import sys

from llaca.bench.cli import main

sys.exit(main())
