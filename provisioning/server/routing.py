"""How every route of the HQ HTTP API reads its JSON body (``JsonRoute``, the app's
route class): with JSON's own number semantics and nothing Python's ``json`` adds.

- A number with no fraction is an integer whatever its spelling (``7``, ``7.0``,
  ``7e0``), as the API document's JSON Schema ``integer`` says; the strict models then
  refuse any other number where an integer belongs.
- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON) are refused, and so is an object
  with the same key twice (which value counts would be the parser's choice).

Both refusals are malformed JSON (400). The body arrives here already bounded and
checked (``middleware``); nesting is bounded by the body's size and the parser's
recursion guard (also a 400). Never logs a body.
"""

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# |n| < 10**19: turning a decimal into an int costs nothing; larger integers are out of
# every field's range anyway and stay floats, which the models refuse.
_MAX_INTEGER_DIGITS = 19


def _number(text: str) -> int | float:
    value = Decimal(text)
    if value.adjusted() < _MAX_INTEGER_DIGITS and value == value.to_integral_value():
        return int(value)
    return float(text)


def _not_json(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise json.JSONDecodeError("an object has the same key twice", "", 0)
    return obj


def loads(body: bytes) -> Any:
    """The JSON document in ``body`` (UTF-8, checked by ``middleware``)."""
    return json.loads(
        body,
        parse_float=_number,
        parse_constant=_not_json,
        object_pairs_hook=_object,
    )


class JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route whose request reads JSON with ``loads``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_json(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return with_json
