"""llmspawner_dev.processes.free_port: the dev stack's ports cannot be taken before they are bound.

The hub's port was picked (``bind(("127.0.0.1", 0))``, then closed) a minute before the hub
bound it; under load something else got it in between ("Address already in use"). These
tests start a few plain Python processes (the other pickers); nothing is mocked.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmspawner_dev import processes


@pytest.fixture
def reservations(tmp_path, monkeypatch):
    """free_port's reservations in a folder of this test (other pickers point there too)."""
    folder = tmp_path / "ports"
    monkeypatch.setattr(processes, "PORT_RESERVATIONS", folder)
    monkeypatch.setattr(processes, "_reserved_here", set())
    monkeypatch.setattr(processes, "_swept", [])
    return folder


def _picker(folder: Path, port_range: tuple[int, int], count: int) -> subprocess.Popen:
    """Another process that reserves ``count`` ports with free_port, prints them, and holds
    them until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from llmspawner_dev import processes
        processes.PORT_RESERVATIONS = Path({str(folder)!r})
        processes.PORT_RANGE = {port_range!r}
        print(" ".join(str(processes.free_port()) for _ in range({count})), flush=True)
        sys.stdin.read()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive ports of free_port's range that nothing has bound right now."""
    low, high = processes.PORT_RANGE
    eph_low, eph_high = processes.ephemeral_port_range()
    start = low
    while start + size - 1 <= high:
        ports = range(start, start + size)
        if all(
            not eph_low <= p <= eph_high and processes._bind_test("127.0.0.1", p) for p in ports
        ):
            return start, start + size - 1
        start += size
    pytest.skip("no free run of ports in free_port's range")


def test_the_port_is_one_the_kernel_never_hands_out_by_itself(reservations):
    """The race's cause: a ``bind(0)`` port is in the ephemeral range, where every client
    connection's local port (and every other ``bind(0)``) comes from."""
    eph_low, eph_high = processes.ephemeral_port_range()
    for _ in range(20):
        port = processes.free_port()
        assert not eph_low <= port <= eph_high
        with socket.socket() as s:  # and it can be bound, as before
            s.bind(("127.0.0.1", port))


def test_a_port_reserved_by_a_live_process_is_never_picked_again(reservations, monkeypatch):
    """Two pickers with a 4-port range: the other's ports are not handed out while it lives;
    once it has exited (its reservations released at exit), they are."""
    port_range = _free_range(4)
    monkeypatch.setattr(processes, "PORT_RANGE", port_range)
    other = _picker(reservations, port_range, 2)
    try:
        theirs = {int(p) for p in other.stdout.readline().split()}
        assert len(theirs) == 2
        mine = {processes.free_port(), processes.free_port()}
        assert mine.isdisjoint(theirs)
        assert mine | theirs == set(range(port_range[0], port_range[1] + 1))
        with pytest.raises(OSError) as caught:  # every port of the range is reserved
            processes.free_port()
        assert caught.value.errno == errno.EADDRINUSE
        assert f"{port_range[0]}-{port_range[1]}" in str(caught.value)
    finally:
        other.stdin.close()
        other.wait(30)
    assert processes.free_port() in theirs  # released at its exit


def test_a_reservation_left_by_a_dead_process_is_taken_over(reservations, monkeypatch):
    port_range = _free_range(1)
    monkeypatch.setattr(processes, "PORT_RANGE", port_range)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reservations.mkdir()
    (reservations / str(port_range[0])).write_text(f"{dead.pid} 1\n")  # killed: no release
    assert processes.free_port() == port_range[0]
    assert (reservations / str(port_range[0])).read_text().split()[0] == str(processes.os.getpid())


def test_reservations_of_dead_processes_are_removed_at_the_first_pick(reservations):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reservations.mkdir()
    stale = reservations / "1"  # outside any range: only the sweep removes it
    stale.write_text(f"{dead.pid} 1\n")
    port = processes.free_port()
    assert not stale.exists()
    assert (reservations / str(port)).exists()


def test_a_port_something_else_has_bound_is_skipped(reservations, monkeypatch):
    """A listener that picked its port by other means (or a connection in ``TIME_WAIT``)."""
    port_range = _free_range(2)
    monkeypatch.setattr(processes, "PORT_RANGE", port_range)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port_range[0]))
        taken.listen()
        assert processes.free_port() == port_range[1]


def test_release_port_lets_it_be_picked_again(reservations, monkeypatch):
    port_range = _free_range(1)
    monkeypatch.setattr(processes, "PORT_RANGE", port_range)
    port = processes.free_port()
    with pytest.raises(OSError):
        processes.free_port()
    processes.release_port(port)
    assert not (reservations / str(port)).exists()
    assert processes.free_port() == port
