"""Exit codes of ``fieldpass``: the verdicts (0-40) and sysexits(3) for everything else.

Decided here and nowhere else; the README's table is generated from the same numbers
(tests/test_docs.py checks it).
"""

from .verdict import EXIT_CODES

OK = 0
USAGE = 2  # a command line click (or the gate) could not parse
EX_USAGE = 64  # a command line that parsed but makes no sense
EX_DATAERR = 65  # input data is not what the command takes
EX_NOINPUT = 66  # an input file does not exist or cannot be read
EX_UNAVAILABLE = 69  # HQ could not be reached (online commands only)
EX_SOFTWARE = 70  # a bug: please report it
EX_NOACCESS = 71  # this user may not read the device's data: the gate runs as root
EX_CANTCREAT = 73  # cannot write to the persistent partition
EX_IOERR = 74  # an I/O error on the persistent partition
EX_TEMPFAIL = 75  # another fieldpass process holds the lock; try again
EX_NOPERM = 77  # HQ refused this device (online commands only)
EX_CONFIG = 78  # the device config, keyring or identity is missing or wrong

VERDICTS = EXIT_CODES
