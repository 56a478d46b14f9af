"""``python -m feedback_store``: the store's command line (``cli.py``)."""

import sys

from .cli import main

sys.exit(main())
