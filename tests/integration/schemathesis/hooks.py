"""Schemathesis hooks for tests/integration/test_openapi_contract.py (loaded through SCHEMATHESIS_HOOKS).

A CSV body is text on the wire. Schemathesis has no CSV encoder, and its negative cases of the
wrong JSON type (an object, a number) have no CSV form at all: they are sent as an empty body,
which is what a client that has nothing to encode sends, and which the server must refuse.
"""

import schemathesis


@schemathesis.serializer("text/csv")
def csv_text(ctx, value):
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b""
