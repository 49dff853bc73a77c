"""Pod IPs: one per pod, never one held twice, handed out in turn."""

from __future__ import annotations

import pytest

from devcluster.agent.addresses import AddressPoolExhausted, PodAddressPool

pytestmark = pytest.mark.unit


def test_node_takes_the_first_address_and_pods_the_following_ones() -> None:
    pool = PodAddressPool("127.150.0.0/16")
    assert pool.host_ip == "127.150.0.1"
    assert pool.allocate("a") == "127.150.0.2"
    assert pool.allocate("b") == "127.150.0.3"
    assert pool.allocate("a") == "127.150.0.2"


def test_released_addresses_are_not_reused_at_once() -> None:
    pool = PodAddressPool("127.150.0.0/16")
    first = pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b") != first


def test_claims_respect_holders_and_the_network() -> None:
    pool = PodAddressPool("127.150.0.0/16")
    assert pool.claim("a", "127.150.3.4")
    assert not pool.claim("b", "127.150.3.4")
    assert not pool.claim("b", "127.151.0.2")
    assert not pool.claim("b", "127.150.0.1")  # the node's own
    assert pool.held == {"a": "127.150.3.4"}


def test_no_address_is_held_twice_even_after_wrapping() -> None:
    pool = PodAddressPool("127.150.0.0/29")  # .2 to .6: five pod addresses
    held = {pool.allocate(str(n)) for n in range(5)}
    assert len(held) == 5
    with pytest.raises(AddressPoolExhausted):
        pool.allocate("one too many")
    pool.release("3")
    assert pool.allocate("again") == "127.150.0.5"
