"""Consumer identity: client secrets, signing keys, access tokens and the token endpoint."""
