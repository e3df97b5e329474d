"""When the published key set is read: the edge refetches it this often, which bounds how early a
new signing key must be published before it signs.

Both the edge configuration (its JWKS cache period) and the key ring (its publish lead) read
it here, so the two cannot drift apart.
"""

from __future__ import annotations

# The edge refetches the key set at this period and not on an unknown key id.
KEY_SET_REFRESH_SECONDS = 30
