"""The test servers' free ports (tests/fixtures/ports.py): two pytest-xdist workers are never
handed the same one, so servers started at once in two workers cannot collide."""

from __future__ import annotations

import socket

import pytest

from tests.fixtures.ports import free_port, worker_slot


def test_outside_xdist_any_free_port_will_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert worker_slot() == (0, 1)
    port = free_port()
    with socket.socket() as s:  # it is free: a server can bind it
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("count", [2, 3])
def test_each_worker_gets_ports_no_other_worker_gets(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    handed: dict[int, set[int]] = {}
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        assert worker_slot() == (index, count)
        handed[index] = {free_port() for _ in range(20)}
        assert {p // 2 % count for p in handed[index]} == {index}
    for a in range(count):
        for b in range(a + 1, count):
            assert not handed[a] & handed[b]


def test_a_port_held_by_a_server_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        held = server.getsockname()[1]
        assert held // 2 % 2 == 1
        assert all(free_port() != held for _ in range(50))
