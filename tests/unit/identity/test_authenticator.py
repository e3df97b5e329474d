"""Bearer authentication of API calls: token checks, revocation within the recheck interval, tenant header."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestra_server.errors import Unauthenticated
from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from orchestra_server.identity.authenticator import Authenticator, Principal, check_forwarded_tenant

from .conftest import NOW, FakeDirectory

CLIENT = "client-1"


@pytest.fixture
def token(directory: FakeDirectory, issuer: AccessTokenIssuer) -> str:
    directory.add(CLIENT, "secret", tenant_id="tenant-a")
    return issuer.issue(CLIENT, "tenant-a", NOW)[0]


@pytest.fixture
def authenticator(verifier: AccessTokenVerifier, directory: FakeDirectory) -> Authenticator:
    return Authenticator(verifier, directory, recheck_seconds=2.0)


def test_a_valid_bearer_token_names_consumer_tenant_and_permissions(
    authenticator: Authenticator, token: str
) -> None:
    assert authenticator.authenticate(f"Bearer {token}", NOW) == Principal(
        client_id=CLIENT, tenant_id="tenant-a", permissions=frozenset({"access orchestra api"})
    )


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_scheme_is_case_insensitive(authenticator: Authenticator, token: str, scheme: str) -> None:
    assert authenticator.authenticate(f"{scheme} {token}", NOW).client_id == CLIENT


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_token_is_unauthenticated(authenticator: Authenticator, header: str | None) -> None:
    with pytest.raises(Unauthenticated, match="missing access token"):
        authenticator.authenticate(header, NOW)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer  {token}",
        "Bearer {token} {token}",
        "Bearer {token} ",
        " Bearer {token}",
        "Basic {token}",
        "{token}",
        "Bearer\t{token}",
        "Bearer {token}x",
        "Bearer not-a-jwt",
    ],
)
def test_malformed_authorization_is_unauthenticated(
    authenticator: Authenticator, token: str, header: str
) -> None:
    with pytest.raises(Unauthenticated, match="invalid access token"):
        authenticator.authenticate(header.format(token=token), NOW)


def test_an_expired_token_is_unauthenticated(authenticator: Authenticator, token: str) -> None:
    authenticator.authenticate(f"Bearer {token}", NOW)
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(hours=2))


def test_revocation_takes_effect_within_the_recheck_interval(
    authenticator: Authenticator, directory: FakeDirectory, token: str
) -> None:
    authenticator.authenticate(f"Bearer {token}", NOW)
    directory.update(CLIENT, revoked=True)
    # Still remembered as active inside the interval ...
    authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=1.9))
    # ... and refused once it has passed, although the token itself is still valid.
    with pytest.raises(Unauthenticated, match="invalid access token"):
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=2))


def test_a_deleted_consumer_is_unauthenticated(
    authenticator: Authenticator, directory: FakeDirectory, token: str
) -> None:
    authenticator.authenticate(f"Bearer {token}", NOW)
    del directory.consumers[CLIENT]
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=2))


def test_permission_changes_reach_the_principal_within_the_interval(
    authenticator: Authenticator, directory: FakeDirectory, token: str
) -> None:
    # Which permission a call needs is the transport's table; the principal carries them all.
    assert authenticator.authenticate(f"Bearer {token}", NOW).permissions == {"access orchestra api"}
    directory.update(CLIENT, permissions=frozenset({"operate orchestra"}))
    assert authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=1)).permissions == {
        "access orchestra api"
    }
    assert authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=2)).permissions == {
        "operate orchestra"
    }
    directory.update(CLIENT, permissions=frozenset())
    assert (
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=4)).permissions == frozenset()
    )


def test_the_directory_is_read_at_most_once_per_interval(
    authenticator: Authenticator, directory: FakeDirectory, token: str
) -> None:
    for tenth in range(20):
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=tenth / 10))
    assert directory.lookups == 1
    authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=2))
    assert directory.lookups == 2


def test_a_clock_going_backwards_forces_a_recheck(
    authenticator: Authenticator, directory: FakeDirectory, token: str
) -> None:
    authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=10))
    directory.update(CLIENT, revoked=True)
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {token}", NOW + timedelta(seconds=5))


def test_a_token_for_another_tenant_than_the_consumer_is_refused(
    authenticator: Authenticator, directory: FakeDirectory, issuer: AccessTokenIssuer, token: str
) -> None:
    forged_tenant = issuer.issue(CLIENT, "tenant-b", NOW)[0]
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {forged_tenant}", NOW)


def test_the_clock_is_used_when_no_time_is_given(
    verifier: AccessTokenVerifier, directory: FakeDirectory, token: str
) -> None:
    authenticator = Authenticator(verifier, directory, clock=lambda: NOW + timedelta(minutes=5))
    assert authenticator.authenticate(f"Bearer {token}").tenant_id == "tenant-a"
    late = Authenticator(verifier, directory, clock=lambda: NOW + timedelta(hours=3))
    with pytest.raises(Unauthenticated):
        late.authenticate(f"Bearer {token}")


def test_forwarded_tenant_must_match_the_token() -> None:
    principal = Principal(client_id=CLIENT, tenant_id="tenant-a")
    check_forwarded_tenant(principal, None)
    check_forwarded_tenant(principal, "tenant-a")
    for forwarded in ("tenant-b", "", "TENANT-A", "tenant-a "):
        with pytest.raises(Unauthenticated, match="tenant"):
            check_forwarded_tenant(principal, forwarded)
