"""The published limits on values: numbers the service enforces and every side of the wire sizes from.

They live here, outside the service, because the clients and the edge size their messages and
buffers from them too (wire.message_sizes); the service checks them (service.limits).
"""

from __future__ import annotations

MAX_VARIABLE_BYTES = 1024 * 1024  # one value, as compact JSON
MAX_START_VARIABLES_BYTES = 1024 * 1024  # the values of one start's initial variables together
# All of one instance's variables together, measured as the compact JSON object getVariables
# answers ({"name":value,...}); every write that would make it larger is refused.
MAX_INSTANCE_VARIABLES_BYTES = 2 * 1024 * 1024
# The largest REST request body the edge passes on (413 beyond); the service decodes anything
# the edge admits, so an oversized value gets the service's own 400.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
# Depth of a JSON value: a scalar, [] and {} are depth 1; a non-empty array or object is one
# more than its deepest member. So [[1]] and [[[]]] are both depth 3.
MAX_JSON_DEPTH = 32
# Numbers travel as IEEE doubles: past 2^53 - 1 an integer cannot be exact (2^53 + 1 arrives as
# 2^53), so integral numbers of larger magnitude are refused rather than silently rounded.
MAX_EXACT_INTEGER = 2**53 - 1
