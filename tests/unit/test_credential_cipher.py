"""credential_cipher.py: credentials sealed at rest, read back with any configured key, rotated to the first."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from external_agents.credential_cipher import CredentialCipher, CredentialDecryptionError

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
CREDENTIALS = {"token": "s3cret-platform-token", "extra": {"n": 1, "unicode": "Ünïcödé 😀"}}


def test_round_trip_keeps_every_value_and_hides_them_in_the_token() -> None:
    cipher = CredentialCipher([OLD_KEY])

    token = cipher.encrypt(CREDENTIALS)

    assert cipher.decrypt(token) == CREDENTIALS
    assert b"s3cret-platform-token" not in token
    # Fernet tokens are fresh each time (random IV), so equal credentials are not recognisable by their token.
    assert cipher.encrypt(CREDENTIALS) != token


def test_an_empty_credential_set_still_yields_a_full_sized_token() -> None:
    token = CredentialCipher([OLD_KEY]).encrypt({})

    assert len(token) > 100
    assert CredentialCipher([OLD_KEY]).decrypt(token) == {}


def test_tokens_under_an_older_key_are_read_while_it_is_still_configured() -> None:
    old_token = CredentialCipher([OLD_KEY]).encrypt(CREDENTIALS)

    assert CredentialCipher([NEW_KEY, OLD_KEY]).decrypt(old_token) == CREDENTIALS
    with pytest.raises(CredentialDecryptionError, match="EXTERNAL_AGENT_ENCRYPTION_KEY"):
        CredentialCipher([NEW_KEY]).decrypt(old_token)


def test_rotate_re_encrypts_under_the_first_key() -> None:
    old_token = CredentialCipher([OLD_KEY]).encrypt(CREDENTIALS)

    rotated = CredentialCipher([NEW_KEY, OLD_KEY]).rotate(old_token)

    assert CredentialCipher([NEW_KEY]).decrypt(rotated) == CREDENTIALS
    with pytest.raises(CredentialDecryptionError):
        CredentialCipher([OLD_KEY]).decrypt(rotated)


def test_a_token_no_key_matches_is_refused_without_naming_the_keys() -> None:
    foreign = CredentialCipher([Fernet.generate_key().decode()]).encrypt(CREDENTIALS)

    with pytest.raises(CredentialDecryptionError) as caught:
        CredentialCipher([NEW_KEY, OLD_KEY]).rotate(foreign)

    assert NEW_KEY not in str(caught.value) and OLD_KEY not in str(caught.value)


def test_at_least_one_key_is_required() -> None:
    with pytest.raises(ValueError, match="at least one Fernet key"):
        CredentialCipher([])
