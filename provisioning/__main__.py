"""``python -m provisioning`` is ``fieldpass-hq``."""

import sys

from .cli import main

sys.exit(main())
