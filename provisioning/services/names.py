"""The one grammar of the names people give at HQ: plans, products, features, sites,
admin tokens. The HTTP models use the same pattern (server/api_models.py).

The whole value must match (``fullmatch``): ``$`` alone would also match before a
trailing newline, and a name with a newline would reach the database and the audit log.

Pure: no storage, no clock.
"""

import re

from ..errors import InvalidRequest

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidRequest(f"{what} must be 1-64 letters, digits, '.', '_' or '-'")
    return value
