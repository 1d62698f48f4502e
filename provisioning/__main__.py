"""``python -m provisioning`` is ``fieldpass-hq``: ``cli.main``, nothing of its own."""

import sys

from .cli import main

sys.exit(main())
