import pytest

from mesh.errors import IPAMError
from mesh.state.ipam import IPAM
from mesh.state.store import StateStore


@pytest.fixture
def store(tmp_path):
    s = StateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_allocates_distinct_addresses_skipping_network_broadcast_and_router(store):
    ipam = IPAM(store, "10.9.0.0/29", reserved=("10.9.0.1",))
    got = [ipam.allocate(f"ep{i}") for i in range(5)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    assert len(set(got)) == 5


def test_exhaustion_is_a_clear_error(store):
    ipam = IPAM(store, "10.9.0.0/30", reserved=("10.9.0.1",))
    ipam.allocate("a")
    with pytest.raises(IPAMError, match="exhausted"):
        ipam.allocate("b")


def test_same_owner_gets_the_same_address(store):
    ipam = IPAM(store, "10.9.0.0/24")
    assert ipam.allocate("a") == ipam.allocate("a")


def test_requested_address_checked(store):
    ipam = IPAM(store, "10.9.0.0/24", reserved=("10.9.0.1",))
    assert ipam.allocate("a", "10.9.0.77") == "10.9.0.77"
    with pytest.raises(IPAMError, match="already allocated to a"):
        ipam.allocate("b", "10.9.0.77")
    with pytest.raises(IPAMError, match="outside the pod CIDR"):
        ipam.allocate("b", "10.8.0.5")
    with pytest.raises(IPAMError, match="reserved"):
        ipam.allocate("b", "10.9.0.1")
    with pytest.raises(IPAMError, match="reserved"):
        ipam.allocate("b", "10.9.0.255")
    with pytest.raises(IPAMError, match="not an IP"):
        ipam.allocate("b", "banana")


def test_release_makes_the_address_available_again(store):
    ipam = IPAM(store, "10.9.0.0/30", reserved=("10.9.0.1",))
    ip = ipam.allocate("a")
    assert ipam.release(ip, "a")
    assert ipam.allocate("b") == ip


def test_allocations_persist_and_are_never_handed_out_twice_after_reopen(tmp_path):
    path = str(tmp_path / "state.db")
    s1 = StateStore(path)
    first = {IPAM(s1, "10.9.0.0/24").allocate(f"ep{i}") for i in range(10)}
    s1.close()
    s2 = StateStore(path)
    ipam = IPAM(s2, "10.9.0.0/24")
    more = {ipam.allocate(f"new{i}") for i in range(10)}
    assert not first & more
    assert set(ipam.allocated()) == first | more
    s2.close()


def test_failed_transaction_allocates_nothing(store):
    ipam = IPAM(store, "10.9.0.0/24")
    with pytest.raises(RuntimeError):
        with store.transaction():
            ipam.allocate("a")
            raise RuntimeError("boom")
    assert ipam.allocated() == {}
