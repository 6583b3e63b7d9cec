"""The cluster's pure parts: key slots, the slot table and what a redirect teaches it, and which
arguments are keys.  The servers are the oracle: ``CLUSTER KEYSLOT`` for slots, ``CLUSTER
SLOTS``/``SHARDS`` of a real cluster for the parsers, ``COMMAND GETKEYS`` for keys."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis.crc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anypool import ProtocolError
from anypool._cluster._keys import ASK_SERVER, CommandTable, key_positions
from anypool._cluster._routing import single_key_command
from anypool._cluster._slots import (
    SLOTS,
    Node,
    Shard,
    SlotTable,
    key_slot,
    parse_cluster_shards,
    parse_cluster_slots,
)
from anypool._resp import NEED_DATA, Packer, PythonParser
from anypool.testing import RedisServer

# --- key slots --------------------------------------------------------------------------------


def test_key_slots_of_the_documentation() -> None:
    assert key_slot(b"foo") == 12182
    assert key_slot(b"bar") == 5061
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")


@given(st.binary(max_size=40) | st.text(alphabet="{}ab", max_size=12).map(str.encode))
def test_key_slot_agrees_with_redis_py(key: bytes) -> None:
    assert key_slot(key) == redis.crc.key_slot(key)
    assert 0 <= key_slot(key) < SLOTS


# --- the slot table ---------------------------------------------------------------------------

A, B, C = Node("127.0.0.1", 7000), Node("127.0.0.1", 7001), Node("127.0.0.1", 7002)
RA, RB = Node("127.0.0.1", 7100), Node("127.0.0.1", 7101)


def three_shards() -> SlotTable:
    return SlotTable(
        [(0, 5460, Shard(A, (RA,))), (5461, 10922, Shard(B, (RB,))), (10923, 16383, Shard(C))]
    )


def test_a_table_answers_by_slot() -> None:
    table = three_shards()
    assert table.covered == SLOTS and table.uncovered() == []
    assert table.shard(0) == Shard(A, (RA,)) and table.shard(16383) == Shard(C)
    assert table.primaries == (A, B, C)
    assert table.nodes == (A, B, C, RA, RB)
    assert [(f, last, s.primary if s else None) for f, last, s in table.ranges()] == [
        (0, 5460, A), (5461, 10922, B), (10923, 16383, C),
    ]  # fmt: skip


def test_uncovered_slots_are_reported() -> None:
    table = SlotTable([(0, 99, Shard(A)), (200, 16383, Shard(B))])
    assert table.shard(150) is None
    assert table.uncovered() == [(100, 199)]
    assert table.covered == SLOTS - 100


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ([(0, 10, Shard(A)), (5, 20, Shard(B))], "slot 5 is claimed by both"),
        ([(0, 16384, Shard(A))], "outside"),
        ([(0, 1, Shard(A)), (2, 3, Shard(A, (RA,)))], "described twice"),
    ],
)
def test_inconsistent_tables_are_refused(assignments: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlotTable(assignments)


def test_moved_to_a_known_primary_moves_one_slot() -> None:
    table = three_shards().moved(100, B)
    assert table.shard(100) == Shard(B, (RB,))
    assert table.shard(99) == Shard(A, (RA,)) and table.shard(101) == Shard(A, (RA,))
    assert table.covered == SLOTS


def test_moved_to_a_replica_is_a_failover_of_the_whole_shard() -> None:
    table = three_shards().moved(100, RA)
    for slot in (0, 100, 5460):
        assert table.shard(slot) == Shard(RA, ())  # the demoted primary is out
    assert A not in table.nodes
    assert table.shard(5461) == Shard(B, (RB,))


def test_moved_to_an_unknown_node_gives_the_slot_a_shard_of_its_own() -> None:
    new = Node("127.0.0.1", 7777)
    table = three_shards().moved(7, new)
    assert table.shard(7) == Shard(new) and table.shard(8) == Shard(A, (RA,))
    assert three_shards().moved(7, A) == three_shards()  # already so: the same table


@st.composite
def tables(draw: st.DrawFn) -> SlotTable:
    nodes = [Node("127.0.0.1", 7000 + i) for i in range(8)]
    count = draw(st.integers(1, 4))
    cuts = sorted(
        draw(
            st.lists(st.integers(1, SLOTS - 1), min_size=count - 1, max_size=count - 1, unique=True)
        )
    )
    bounds = [0, *cuts, SLOTS]
    shards = [Shard(nodes[i], (nodes[4 + i],) if draw(st.booleans()) else ()) for i in range(count)]
    return SlotTable((bounds[i], bounds[i + 1] - 1, shards[i]) for i in range(count))


@given(tables(), st.lists(st.tuples(st.integers(0, SLOTS - 1), st.integers(0, 7)), max_size=6))
@settings(max_examples=60, deadline=None)
def test_moved_changes_only_what_it_must(
    table: SlotTable, redirects: list[tuple[int, int]]
) -> None:
    """After any MOVED: the slot is served by the node named, as a primary; every other slot
    keeps a primary (the same one, unless it was demoted by a failover of its shard); full
    coverage stays full; no node is both a primary and a replica."""
    for slot, port in redirects:
        node = Node("127.0.0.1", 7000 + port)
        before = table
        table = table.moved(slot, node)
        shard = table.shard(slot)
        assert shard is not None and shard.primary == node
        assert table.covered == before.covered
        failover = before.shard(slot) is not None and node in before.shard(slot).replicas  # type: ignore[union-attr]
        for other in range(0, SLOTS, 97):
            old, new = before.shard(other), table.shard(other)
            assert new is not None and old is not None
            if other != slot and not (failover and old == before.shard(slot)):
                assert new.primary == old.primary
        primaries = set(table.primaries)
        assert not primaries & {r for s in table.shards for r in s.replicas}


# --- parsing what the server says -------------------------------------------------------------


def test_cluster_slots_with_empty_and_unknown_hosts() -> None:
    reply = [
        [0, 100, [b"", 7000, b"id-a"], [b"?", 7100, b"id-ra"], [b"10.0.0.9", 7101, b"id-rb"]],
        [101, 16383, [b"h", 7001, b"id-b", {b"hostname": b"x"}]],
    ]
    table = parse_cluster_slots(reply, "asked-host")
    assert table.shard(0) == Shard(Node("asked-host", 7000), (Node("10.0.0.9", 7101),))
    assert table.shard(101) == Shard(Node("h", 7001))


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"nonsense", "should be an array"),
        ([[0, 5]], "without a primary"),
        ([[0, 99999, [b"h", 1]]], "outside"),
        ([[5, 1, [b"h", 1]]], "is empty"),
        ([[0, 5, [b"h", b"port?"]]], "should be an integer"),
        ([[0, 5, [b"?", 1]]], "no known address"),
        ([[0, 5, [b"h", 1]], [3, 9, [b"g", 2]]], "claimed by both"),
    ],
)
def test_malformed_cluster_slots_is_a_protocol_error(reply: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_cluster_slots(reply, "h")


def test_cluster_shards_keeps_online_nodes_and_reads_resp3_maps() -> None:
    def node(port: int, role: bytes, health: bytes = b"online") -> dict[bytes, Any]:
        return {
            b"port": port,
            b"endpoint": b"",
            b"ip": b"1.2.3.4",
            b"role": role,
            b"health": health,
        }

    reply = [
        {
            b"slots": [0, 10, 20, 30],
            b"nodes": [node(1, b"master"), node(2, b"replica"), node(3, b"replica", b"loading")],
        },
        {b"slots": [31, 40], b"nodes": [node(4, b"master", b"failed"), node(5, b"replica")]},
        {b"slots": [], b"nodes": [node(6, b"master")]},
    ]  # fmt: skip
    table = parse_cluster_shards(reply, "asked")
    assert table.shard(5) == table.shard(25) == Shard(Node("asked", 1), (Node("asked", 2),))
    assert table.shard(15) is None and table.shard(35) is None  # no healthy primary: uncovered
    assert Node("asked", 6) not in table.nodes


# --- which arguments are keys: the servers are the oracle -------------------------------------


def call(server: RedisServer, *args: Any) -> Any:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(Packer().pack(args))
        parser = PythonParser()
        while (reply := parser.gets(decode=False)) is NEED_DATA:
            data = sock.recv(1 << 20)
            assert data, "the server closed the connection"
            parser.feed(data)
    return reply


@pytest.fixture(scope="module", params=["redis", "valkey"])
def oracle(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[RedisServer, CommandTable]]:
    server: RedisServer = request.getfixturevalue(f"{request.param}_server")
    return server, CommandTable.from_reply(call(server, "COMMAND"))


SAMPLES: list[list[str]] = [
    ["GET", "a"], ["SET", "a", "1", "EX", "10"], ["MSET", "a", "1", "b", "2"],
    ["MGET", "a", "b", "c"], ["EVAL", "return 1", "2", "k1", "k2", "x"], ["EVALSHA", "ab", "0"],
    ["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"],
    ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", "0"],
    ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"], ["ZUNION", "2", "a", "b"],
    ["OBJECT", "ENCODING", "k"], ["XINFO", "STREAM", "s"], ["DEL", "a", "b", "c"],
    ["BITOP", "AND", "d", "a", "b"], ["RENAME", "a", "b"], ["MEMORY", "USAGE", "k"],
    ["PFCOUNT", "a", "b"], ["TOUCH", "a"], ["ZRANGESTORE", "d", "s", "0", "-1"],
    ["XADD", "s", "*", "f", "v"], ["PING"], ["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"],
    ["BLMPOP", "0", "2", "a", "b", "LEFT"], ["LMPOP", "1", "a", "LEFT"],
    ["SINTERCARD", "2", "a", "b"], ["LCS", "a", "b"], ["SORT", "k", "BY", "w*", "STORE", "dst"],
]  # fmt: skip


def check_against_server(server: RedisServer, table: CommandTable, args: Sequence[str]) -> bool:
    """Our keys equal the server's (as a multiset; Redis 6.2 lists ZUNIONSTORE's destination
    last), or we ask the server, which is then never wrong.  False when the server does not
    know the command or refuses the arguments (nothing to compare)."""
    info = table.get(args)
    if info is None:
        return False
    encoded = [a.encode() for a in args]
    mine = key_positions(info, encoded)
    theirs = call(server, "COMMAND", "GETKEYS", *args)
    if isinstance(theirs, Exception):
        # Refused arguments (or a command with no keys, or with only channels: SPUBLISH's
        # channel is routed as a key but is not one): whatever we route by, the server answers.
        return False
    if mine is ASK_SERVER:
        assert info.movable_keys or any(s.incomplete for s in info.key_specs or ())
        return True
    assert sorted(encoded[i] for i in mine) == sorted(theirs), (args, mine, theirs)
    return True


def test_keys_of_sample_commands_match_the_server(
    oracle: tuple[RedisServer, CommandTable],
) -> None:
    server, table = oracle
    compared = sum(check_against_server(server, table, args) for args in SAMPLES)
    assert compared >= 20  # most samples exist on both servers


WORDS = st.sampled_from(["STREAMS", "KEYS", "STORE", "GROUP", "2", "1", "0", "-1", "x", "y"])


@given(data=st.data())
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_keys_of_any_command_match_the_server(
    oracle: tuple[RedisServer, CommandTable], data: st.DataObject
) -> None:
    """Any command the server has, with arguments drawn to hit keywords and counts: where the
    server names keys, ours are the same."""
    server, table = oracle
    names = sorted(
        name.decode()
        for name in table.names()
        if name not in (b"shutdown", b"debug", b"monitor", b"sync", b"psync", b"quit")
    )
    name = data.draw(st.sampled_from(names))
    args = [name, *data.draw(st.lists(WORDS | st.text("abc", min_size=1, max_size=3), max_size=8))]
    check_against_server(server, table, args)


def test_one_key_commands_are_told_apart_as_the_server_would(
    oracle: tuple[RedisServer, CommandTable],
) -> None:
    """The client's fast path routes a command by its first argument alone when
    single_key_command says so: for every such command the server agrees that its only key
    is the first argument, whatever follows it."""
    server, table = oracle
    fast = [n.decode() for n in table.names() if single_key_command(n.decode(), table)]
    assert {"get", "set", "incr", "hset", "lpush", "expire"} <= set(fast)
    assert not {"mget", "mset", "del", "eval", "xread", "object", "keys", "ping"} & set(fast)
    for name in fast:
        for extra in ([], ["x"], ["x", "y", "z"], ["x"] * 6):
            theirs = call(server, "COMMAND", "GETKEYS", name, "the-key", *extra)
            if not isinstance(theirs, Exception):
                assert theirs == [b"the-key"], (name, extra, theirs)
