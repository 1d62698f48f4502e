"""``python -m agent`` is ``fieldpass``."""

from .main import main

main()
