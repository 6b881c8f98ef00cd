"""
Replica tokens: issued for a replica uuid, checked by signature and age on
a fake clock.
"""

from __future__ import annotations

import pytest

from devpi_tx.auth.replicatokens import (
    EXPIRED,
    MALFORMED,
    REPLICA_AUTH_MAX_AGE,
    WRONG,
    ReplicaAuthError,
    ReplicaTokens,
)
from devpi_tx.auth.tokens import TokenSigner

SECRET = b"s" * 44
UUID = "91a580d5a2a84869ad317c8ed4c6c929"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(tokens: ReplicaTokens, token: str) -> str:
    with pytest.raises(ReplicaAuthError) as info:
        tokens.check(token)
    assert str(info.value) == info.value.message
    return info.value.message


def test_a_token_names_its_replica():
    clock = FakeClock()
    tokens = ReplicaTokens(SECRET, clock=clock)
    token = tokens.issue(UUID)
    assert tokens.check(token) == UUID
    # Another server sharing the secret agrees.
    assert ReplicaTokens(SECRET, clock=clock).check(token) == UUID
    assert tokens.max_age == REPLICA_AUTH_MAX_AGE == 37.5


def test_a_token_expires_after_max_age_either_way():
    clock = FakeClock()
    tokens = ReplicaTokens(SECRET, clock=clock)
    token = tokens.issue(UUID)
    clock.now += 37
    assert tokens.check(token) == UUID
    clock.now += 1
    assert refused(tokens, token) == EXPIRED
    # Made on a clock 38 s ahead of ours.
    clock.now -= 38 + 38
    assert refused(tokens, token) == EXPIRED
    clock.now += 2
    assert tokens.check(token) == UUID


def test_another_secret_or_a_changed_part_is_wrong():
    clock = FakeClock()
    token = ReplicaTokens(SECRET, clock=clock).issue(UUID)
    assert refused(ReplicaTokens(b"t" * 44, clock=clock), token) == WRONG
    tokens = ReplicaTokens(SECRET, clock=clock)
    other, stamp, signature = tokens.issue("0" * 32).split(".")
    mine = token.split(".")
    assert refused(tokens, f"{other}.{mine[1]}.{mine[2]}") == WRONG
    later = ReplicaTokens(SECRET, clock=FakeClock(clock.now + 10)).issue(UUID).split(".")
    assert refused(tokens, f"{mine[0]}.{later[1]}.{mine[2]}") == WRONG


def test_not_a_login_token_nor_the_login_key():
    """
    The replica key is not the key of login tokens: neither kind passes for
    the other.
    """
    clock = FakeClock()
    tokens = ReplicaTokens(SECRET, clock=clock)
    login = TokenSigner(SECRET, clock=clock).issue("root")
    assert refused(tokens, login) == MALFORMED
    assert TokenSigner(SECRET, clock=clock).check(tokens.issue(UUID)) is None


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "a..c", "ab!.cd.ef", "é.b.c", "a b.c.d", "[1].2.3"],
)
def test_malformed(token):
    assert refused(ReplicaTokens(SECRET, clock=FakeClock()), token) == MALFORMED


def test_signature_is_compared_in_constant_time(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    tokens = ReplicaTokens(SECRET, clock=FakeClock())
    assert tokens.check(tokens.issue(UUID)) == UUID
    assert len(calls) == 1
