"""The master's MAC table (sv3.fdb): learning, moves, ageing, flush."""
from sv3.fdb import MacTable

A = bytes.fromhex("525400550001")
B = bytes.fromhex("525400550002")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_learn_move_and_refresh():
    clk = Clock()
    t = MacTable(age=300, clock=clk)
    assert t.learn(A, 1) and t.gen == 1
    assert not t.learn(A, 1) and t.gen == 1     # refresh publishes nothing
    assert t.learn(A, 2) and t.view() == {A: 2}  # moved
    assert t.stats["moved"] == 1


def test_multicast_sources_are_ignored():
    t = MacTable()
    assert not t.learn(bytes.fromhex("010000000001"), 1)
    assert t.view() == {}


def test_ageing_respects_refreshes():
    clk = Clock()
    t = MacTable(age=10, clock=clk)
    t.learn(A, 1)
    t.learn(B, 2)
    clk.t = 8
    t.learn(A, 1)                                # refresh A only
    clk.t = 12
    assert t.expire()
    assert t.view() == {A: 1}
    clk.t = 19
    assert t.expire() and t.view() == {}


def test_flush_port_removes_only_its_entries():
    t = MacTable()
    t.learn(A, 1)
    t.learn(B, 2)
    assert t.flush_port(1)
    assert t.view() == {B: 2}
    assert not t.flush_port(1)


def test_table_is_bounded():
    t = MacTable(max_entries=2)
    t.learn(A, 1)
    t.learn(B, 1)
    assert not t.learn(bytes.fromhex("525400550003"), 1)
    assert t.stats["refused"] == 1


def test_per_port_limit_counts_moves_ageing_and_flush():
    clk = Clock()
    t = MacTable(age=10, max_per_port=2, clock=clk)
    macs = [bytes([0x52, 0, 0, 0, 0, i]) for i in range(5)]
    assert t.learn(macs[0], 1) and t.learn(macs[1], 1)
    assert not t.learn(macs[2], 1)                 # port 1 is full
    assert t.learn(macs[2], 2) and t.learn(macs[3], 2)
    assert not t.learn(macs[0], 2)                 # a move into a full port is refused too
    clk.t = 11
    t.learn(macs[1], 1)                            # refresh one of port 1's
    t.expire()                                     # macs[0], [2], [3] age out
    assert t.learn(macs[4], 1)                     # room again on port 1
    t.flush_port(2)
    assert t.learn(macs[2], 2) and t.learn(macs[3], 2)
