"""The same calls through anypool (asyncio and trio) and redis.asyncio.Redis: equal results.

Every call is deterministic (explicit stream ids, no random commands, no clocks).  Each run
starts from an empty server.  Errors are compared by class and message.  The matrix is the
defaults on both sides (no ``protocol``), then every explicit ``protocol`` (None, 2, 3) and, on
redis-py 8, ``legacy_responses`` (True, False); decode_responses off and on; Redis 6.2 and Valkey
9.1.  nox runs it against each supported redis-py major (``nox -s compat``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio

import anypool
from anypool.testing import RedisServer, find_valkey_server

from .backends import BACKENDS, HAVE_UVLOOP, UVLOOP, run

Call = Callable[[Any], Awaitable[Any]]


async def _pipeline(r: Any, transaction: bool) -> Any:
    pipe = r.pipeline(transaction=transaction)
    pipe.set("d:p1", "x").incr("d:p2").lpush("d:p3", "a", "b").lrange("d:p3", 0, -1)
    pipe.hset("d:p4", mapping={"f": "1"}).hgetall("d:p4").zadd("d:p5", {"m": 2.5})
    pipe.zrange("d:p5", 0, -1, withscores=True).get("d:p1")
    return await pipe.execute()


async def _pipeline_errors(r: Any) -> Any:
    pipe = r.pipeline(transaction=False)
    pipe.set("d:pe", "x").lpush("d:pe", "y").get("d:pe")
    return await pipe.execute(raise_on_error=False)


async def _pipeline_raises(r: Any) -> Any:
    pipe = r.pipeline(transaction=False)
    pipe.set("d:pr", "x").lpush("d:pr", "y").get("d:pr")
    return await pipe.execute()


async def _transaction_raises(r: Any) -> Any:
    pipe = r.pipeline(transaction=True)
    pipe.set("d:tr", "x").lpush("d:tr", "y").get("d:tr")
    return await pipe.execute()


async def _watch_transaction(r: Any) -> Any:
    async def bump(pipe: Any) -> None:
        value = await pipe.get("d:w")
        pipe.multi()
        pipe.set("d:w", int(value or 0) + 1)

    await r.set("d:w", 10)
    return await r.transaction(bump, "d:w")


async def _shape_pipeline(r: Any) -> Any:
    pipe = r.pipeline(transaction=False)
    pipe.zadd("d:sp", {"a": 1, "b": 2}).zrange("d:sp", 0, -1, withscores=True)
    pipe.zpopmin("d:sp").xread({"d:nope": "0-0"}).blpop(["d:nope"], timeout=0.05)
    pipe.hset("d:sp1", "f", "v").hrandfield("d:sp1", 1, withvalues=True).geopos("d:nope", "x")
    return await pipe.execute()


async def _script(r: Any) -> Any:
    script = r.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    return [await script(keys=["d:s"], args=["a"]), await script(keys=["d:s"], args=["b"])]


def _calls() -> list[tuple[str, Call]]:
    c: list[tuple[str, Call]] = []

    def add(name: str, call: Call) -> None:
        c.append((name, call))

    # strings
    add("set", lambda r: r.set("d:str", "value"))
    add("get", lambda r: r.get("d:str"))
    add("get missing", lambda r: r.get("d:nope"))
    add("set nx", lambda r: r.set("d:str", "other", nx=True))
    add("set xx get", lambda r: r.set("d:str", "v2", xx=True, get=True))
    add("append", lambda r: r.append("d:str", "-tail"))
    add("strlen", lambda r: r.strlen("d:str"))
    add("getrange", lambda r: r.getrange("d:str", 0, 3))
    add("setrange", lambda r: r.setrange("d:str", 1, "XY"))
    add("mset", lambda r: r.mset({"d:m1": "1", "d:m2": "2", "d:m3": "é"}))
    add("mget", lambda r: r.mget(["d:m1", "d:m2", "d:nope", "d:m3"]))
    add("msetnx", lambda r: r.msetnx({"d:m1": "x", "d:m4": "y"}))
    add("incr", lambda r: r.incr("d:n"))
    add("incrby", lambda r: r.incrby("d:n", 41))
    add("decr", lambda r: r.decr("d:n"))
    add("decrby", lambda r: r.decrby("d:n", 2))
    add("incrbyfloat", lambda r: r.incrbyfloat("d:f", 1.25))
    add("getset", lambda r: r.getset("d:n", 7))
    add("getdel", lambda r: r.getdel("d:m4"))
    add("setnx", lambda r: r.setnx("d:m1", "z"))
    add("exists", lambda r: r.exists("d:m1", "d:m2", "d:nope"))
    add("type string", lambda r: r.type("d:m1"))
    add("incr wrongtype error", lambda r: r.incr("d:str"))
    add("lcs", lambda r: r.execute_command("STRLEN", "d:m3"))
    # bits
    add("setbit", lambda r: r.setbit("d:bits", 7, 1))
    add("getbit", lambda r: r.getbit("d:bits", 7))
    add("bitcount", lambda r: r.bitcount("d:bits"))
    add("bitpos", lambda r: r.bitpos("d:bits", 1))
    add("bitop", lambda r: r.bitop("OR", "d:bits2", "d:bits", "d:nope"))
    add(
        "bitfield",
        lambda r: r.bitfield("d:bf").set("u8", 0, 200).get("u8", 0).incrby("u8", 0, 100).execute(),
    )
    # keys
    add("rename", lambda r: r.rename("d:m2", "d:m2b"))
    add("renamenx", lambda r: r.renamenx("d:m2b", "d:m1"))
    add("persist", lambda r: r.persist("d:m1"))
    add("expire", lambda r: r.expire("d:m1", 1000))
    add("pexpire", lambda r: r.pexpire("d:m3", 1_000_000))
    add("persist after expire", lambda r: r.persist("d:m1"))
    add("ttl none", lambda r: r.ttl("d:m1"))
    add("ttl missing", lambda r: r.ttl("d:nope"))
    add("copy", lambda r: r.copy("d:m1", "d:m1c"))
    add("delete", lambda r: r.delete("d:m1c", "d:nope"))
    add("unlink", lambda r: r.unlink("d:m2b"))
    add("touch", lambda r: r.touch("d:m1", "d:m3"))
    add("keys", lambda r: _sorted(r.keys("d:m*")))
    add("object encoding", lambda r: r.object("encoding", "d:n"))
    add("dbsize", lambda r: r.dbsize())
    add("rename missing error", lambda r: r.rename("d:nope", "d:nope2"))
    # hashes
    add("hset", lambda r: r.hset("d:h", mapping={"a": "1", "b": "2", "c": "3"}))
    add("hset one", lambda r: r.hset("d:h", "d", "4"))
    add("hget", lambda r: r.hget("d:h", "a"))
    add("hget missing", lambda r: r.hget("d:h", "zz"))
    add("hgetall", lambda r: r.hgetall("d:h"))
    add("hgetall missing", lambda r: r.hgetall("d:nope"))
    add("hmget", lambda r: r.hmget("d:h", ["a", "zz", "c"]))
    add("hkeys", lambda r: r.hkeys("d:h"))
    add("hvals", lambda r: r.hvals("d:h"))
    add("hlen", lambda r: r.hlen("d:h"))
    add("hexists", lambda r: r.hexists("d:h", "b"))
    add("hdel", lambda r: r.hdel("d:h", "b", "zz"))
    add("hincrby", lambda r: r.hincrby("d:h", "a", 5))
    add("hincrbyfloat", lambda r: r.hincrbyfloat("d:h", "f", 0.5))
    add("hsetnx", lambda r: r.hsetnx("d:h", "a", "9"))
    add("hstrlen", lambda r: r.hstrlen("d:h", "c"))
    add("hscan", lambda r: r.hscan("d:h", 0, count=100))
    add("hincrby wrongtype", lambda r: r.hincrby("d:str", "a", 1))
    add("dump restore", lambda r: _dump_restore(r))
    # lists
    add("rpush", lambda r: r.rpush("d:l", "a", "b", "c", "d"))
    add("lpush", lambda r: r.lpush("d:l", "z"))
    add("lrange", lambda r: r.lrange("d:l", 0, -1))
    add("llen", lambda r: r.llen("d:l"))
    add("lindex", lambda r: r.lindex("d:l", 2))
    add("lset", lambda r: r.lset("d:l", 1, "A"))
    add("linsert", lambda r: r.linsert("d:l", "BEFORE", "c", "bc"))
    add("lpos", lambda r: r.lpos("d:l", "c"))
    add("lrem", lambda r: r.lrem("d:l", 0, "bc"))
    add("ltrim", lambda r: r.ltrim("d:l", 0, 3))
    add("lpop", lambda r: r.lpop("d:l"))
    add("rpop count", lambda r: r.rpop("d:l", 2))
    add("rpoplpush", lambda r: r.rpoplpush("d:l", "d:l2"))
    add("lmove", lambda r: r.lmove("d:l2", "d:l", "LEFT", "RIGHT"))
    add("lpushx", lambda r: r.lpushx("d:nope", "x"))
    add("blpop ready", lambda r: r.blpop(["d:l"], timeout=1))
    add("brpop timeout", lambda r: r.brpop(["d:empty"], timeout=0.05))
    add("lpush wrongtype", lambda r: r.lpush("d:h", "x"))
    # sets
    add("sadd", lambda r: r.sadd("d:s1", "a", "b", "c"))
    add("sadd 2", lambda r: r.sadd("d:s2", "b", "c", "d"))
    add("smembers", lambda r: r.smembers("d:s1"))
    add("sismember", lambda r: r.sismember("d:s1", "a"))
    add("smismember", lambda r: r.smismember("d:s1", ["a", "x"]))
    add("scard", lambda r: r.scard("d:s1"))
    add("sinter", lambda r: r.sinter("d:s1", "d:s2"))
    add("sunion", lambda r: r.sunion("d:s1", "d:s2"))
    add("sdiff", lambda r: r.sdiff("d:s1", "d:s2"))
    add("sinterstore", lambda r: r.sinterstore("d:s3", ["d:s1", "d:s2"]))
    add("smove", lambda r: r.smove("d:s1", "d:s2", "a"))
    add("srem", lambda r: r.srem("d:s2", "d", "x"))
    add("smembers empty", lambda r: r.smembers("d:nope"))
    add("sscan", lambda r: _sscan(r))
    # sorted sets
    add("zadd", lambda r: r.zadd("d:z", {"a": 1, "b": 2.5, "c": 3, "d": -1}))
    add("zadd incr", lambda r: r.zadd("d:z", {"a": 2}, incr=True))
    add("zscore", lambda r: r.zscore("d:z", "b"))
    add("zscore missing", lambda r: r.zscore("d:z", "zz"))
    add("zmscore", lambda r: r.zmscore("d:z", ["a", "zz"]))
    add("zrange", lambda r: r.zrange("d:z", 0, -1))
    add("zrange withscores", lambda r: r.zrange("d:z", 0, -1, withscores=True))
    add("zrevrange withscores", lambda r: r.zrevrange("d:z", 0, 1, withscores=True))
    add("zrangebyscore", lambda r: r.zrangebyscore("d:z", 0, 3, withscores=True))
    add("zrevrangebyscore", lambda r: r.zrevrangebyscore("d:z", 3, 0))
    add("zrank", lambda r: r.zrank("d:z", "c"))
    add("zrevrank", lambda r: r.zrevrank("d:z", "c"))
    add("zcard", lambda r: r.zcard("d:z"))
    add("zcount", lambda r: r.zcount("d:z", 1, 3))
    add("zincrby", lambda r: r.zincrby("d:z", 0.5, "d"))
    add("zrem", lambda r: r.zrem("d:z", "d", "zz"))
    add("zpopmin", lambda r: r.zpopmin("d:z"))
    add("zpopmax count", lambda r: r.zpopmax("d:z", 2))
    add("zadd 2", lambda r: r.zadd("d:z2", {"x": 1, "y": 2}))
    add("zunionstore", lambda r: r.zunionstore("d:z3", ["d:z", "d:z2"]))
    add("zinter withscores", lambda r: r.zinter(["d:z3", "d:z2"], withscores=True))
    add("zlexcount", lambda r: r.zlexcount("d:z2", "-", "+"))
    add("zrangebylex", lambda r: r.zrangebylex("d:z2", "-", "+"))
    add("zremrangebyrank", lambda r: r.zremrangebyrank("d:z3", 0, 0))
    add("zscan", lambda r: r.zscan("d:z2", 0))
    add("zrandmember count 0", lambda r: r.zrandmember("d:z2", 0))
    add("zadd wrongtype", lambda r: r.zadd("d:l", {"a": 1}))
    # streams (explicit ids only)
    add("xadd", lambda r: r.xadd("d:x", {"f": "1", "g": "2"}, id="1-1"))
    add("xadd 2", lambda r: r.xadd("d:x", {"f": "3"}, id="2-1"))
    add("xadd 3", lambda r: r.xadd("d:x", {"f": "4"}, id="3-1"))
    add("xlen", lambda r: r.xlen("d:x"))
    add("xrange", lambda r: r.xrange("d:x"))
    add("xrevrange count", lambda r: r.xrevrange("d:x", count=2))
    add("xread", lambda r: r.xread({"d:x": "1-1"}))
    add("xgroup create", lambda r: r.xgroup_create("d:x", "grp", id="0"))
    add("xreadgroup", lambda r: r.xreadgroup("grp", "c1", {"d:x": ">"}, count=2))
    add("xack", lambda r: r.xack("d:x", "grp", "1-1"))
    add("xpending", lambda r: r.xpending("d:x", "grp"))
    add("xpending range", _xpending_range)
    add("xdel", lambda r: r.xdel("d:x", "3-1"))
    add("xtrim", lambda r: r.xtrim("d:x", maxlen=1, approximate=False))
    add("xadd bad id error", lambda r: r.xadd("d:x", {"f": "1"}, id="0-1"))
    # geo
    add(
        "geoadd",
        lambda r: r.geoadd(
            "d:g", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"]
        ),
    )
    add("geodist", lambda r: r.geodist("d:g", "Palermo", "Catania", unit="km"))
    add("geohash", lambda r: r.geohash("d:g", "Palermo", "nope"))
    add("geopos", lambda r: r.geopos("d:g", "Palermo"))
    add(
        "geosearch",
        lambda r: r.geosearch(
            "d:g", longitude=15, latitude=37, radius=200, unit="km", withdist=True, sort="ASC"
        ),
    )
    # reply shapes that differ between protocols and redis-py majors (issue 11); one-member
    # sets where the server picks at random, so every answer is deterministic
    add("shape zadd", lambda r: r.zadd("d:sz", {"a": 1.5, "b": 2, "c": 3.25, "d": 4}))
    add("shape zadd 2", lambda r: r.zadd("d:sz2", {"a": 1, "x": 7}))
    add("shape zadd one", lambda r: r.zadd("d:sz1", {"only": 2.5}))
    add("shape zrange", lambda r: r.zrange("d:sz", 0, -1, withscores=True))
    add(
        "shape zrange cast", lambda r: r.zrange("d:sz", 0, 1, withscores=True, score_cast_func=repr)
    )
    add("shape zrange empty", lambda r: r.zrange("d:nope", 0, -1, withscores=True))
    add("shape zrevrange", lambda r: r.zrevrange("d:sz", 0, 1, withscores=True))
    add("shape zrangebyscore", lambda r: r.zrangebyscore("d:sz", 2, 4, withscores=True))
    add("shape zrevrangebyscore", lambda r: r.zrevrangebyscore("d:sz", 4, 2, withscores=True))
    add("shape zunion", lambda r: r.zunion(["d:sz", "d:sz2"], withscores=True))
    add("shape zunion plain", lambda r: r.zunion(["d:sz", "d:sz2"]))
    add("shape zinter", lambda r: r.zinter(["d:sz", "d:sz2"], withscores=True))
    add("shape zdiff", lambda r: r.zdiff(["d:sz", "d:sz2"], withscores=True))
    add("shape zdiff plain", lambda r: r.zdiff(["d:sz", "d:sz2"]))
    add("shape zrank withscore", lambda r: r.zrank("d:sz", "b", withscore=True))
    add("shape zrevrank withscore", lambda r: r.zrevrank("d:sz", "b", withscore=True))
    add("shape zrandmember", lambda r: r.zrandmember("d:sz1"))
    add("shape zrandmember count", lambda r: r.zrandmember("d:sz1", 1, withscores=True))
    add("shape zrandmember repeat", lambda r: r.zrandmember("d:sz1", -2, withscores=True))
    add("shape zrandmember plain", lambda r: r.zrandmember("d:sz1", -2))
    add("shape zscan", lambda r: r.zscan("d:sz1", 0))
    add("shape zpopmin", lambda r: r.zpopmin("d:sz"))
    add("shape zpopmax count", lambda r: r.zpopmax("d:sz", 2))
    add("shape zpopmin empty", lambda r: r.zpopmin("d:nope"))
    add("shape bzpopmin", lambda r: r.bzpopmin(["d:nope", "d:sz2"], timeout=1))
    add("shape bzpopmax", lambda r: r.bzpopmax(["d:sz2"], timeout=1))
    add("shape bzpopmin timeout", lambda r: r.bzpopmin(["d:nope"], timeout=0.05))
    add("shape zadd 3", lambda r: r.zadd("d:sz3", {"p": 1, "q": 2, "r": 3}))
    add("shape zmpop", lambda r: r.zmpop(2, ["d:nope", "d:sz3"], min=True))
    add("shape zmpop count", lambda r: r.zmpop(1, ["d:sz3"], max=True, count=5))
    add("shape zmpop empty", lambda r: r.zmpop(1, ["d:nope"], min=True))
    add("shape zadd 4", lambda r: r.zadd("d:sz4", {"p": 1, "q": 2}))
    add("shape bzmpop", lambda r: r.bzmpop(1, 1, ["d:sz4"], max=True, count=2))
    add("shape hset one", lambda r: r.hset("d:sh1", "only", "v"))
    add("shape hrandfield", lambda r: r.hrandfield("d:sh1"))
    add("shape hrandfield count", lambda r: r.hrandfield("d:sh1", 1))
    add("shape hrandfield values", lambda r: r.hrandfield("d:sh1", 1, withvalues=True))
    add("shape hrandfield repeat", lambda r: r.hrandfield("d:sh1", -2, withvalues=True))
    add("shape hrandfield missing", lambda r: r.hrandfield("d:nope", 1, withvalues=True))
    add("shape rpush", lambda r: r.rpush("d:sl", "a", "b", "c"))
    add("shape blpop", lambda r: r.blpop(["d:nope", "d:sl"], timeout=1))
    add("shape brpop", lambda r: r.brpop(["d:sl"], timeout=1))
    add("shape blpop timeout", lambda r: r.blpop(["d:nope"], timeout=0.05))
    add("shape xadd", lambda r: r.xadd("d:sx", {"f": "1"}, id="1-0"))
    add("shape xadd 2", lambda r: r.xadd("d:sx", {"f": "2", "g": "é"}, id="2-0"))
    add("shape xadd other", lambda r: r.xadd("d:sx2", {"h": "3"}, id="5-0"))
    add("shape xread", lambda r: r.xread({"d:sx": "0-0", "d:sx2": "0-0"}))
    add("shape xread count", lambda r: r.xread({"d:sx": "1-0"}, count=1))
    add("shape xread empty", lambda r: r.xread({"d:sx": "9-0"}))
    add("shape xread block empty", lambda r: r.xread({"d:sx": "9-0"}, block=50))
    add("shape xgroup", lambda r: r.xgroup_create("d:sx", "sg", id="0"))
    add("shape xreadgroup", lambda r: r.xreadgroup("sg", "c", {"d:sx": ">"}))
    add("shape xreadgroup empty", lambda r: r.xreadgroup("sg", "c", {"d:sx": ">"}))
    add("shape xreadgroup pending", lambda r: r.xreadgroup("sg", "c", {"d:sx": "0"}))
    add("shape xreadgroup block", lambda r: r.xreadgroup("sg", "c", {"d:sx": ">"}, block=50))
    add("shape mset lcs", lambda r: r.mset({"d:lcs1": "ohmytext", "d:lcs2": "mynewtext"}))
    add("shape lcs", lambda r: r.lcs("d:lcs1", "d:lcs2"))
    add("shape lcs len", lambda r: r.lcs("d:lcs1", "d:lcs2", len=True))
    add("shape lcs idx", lambda r: r.lcs("d:lcs1", "d:lcs2", idx=True))
    add(
        "shape lcs idx minmatchlen withmatchlen",
        lambda r: r.lcs("d:lcs1", "d:lcs2", idx=True, minmatchlen=4, withmatchlen=True),
    )
    add("shape geoadd", lambda r: r.geoadd("d:sg", [13.361389, 38.115556, "Palermo"]))
    add("shape geopos", lambda r: r.geopos("d:sg", "Palermo", "nope"))
    add("shape geopos missing key", lambda r: r.geopos("d:nope", "x"))
    add("shape geohash", lambda r: r.geohash("d:sg", "Palermo", "nope"))
    add("shape acl whoami", lambda r: r.acl_whoami())
    add("shape acl cat", lambda r: r.acl_cat("stream"))
    add("shape smembers", lambda r: r.smembers("d:nope"))
    add("shape pipeline", _shape_pipeline)
    # hyperloglog
    add("pfadd", lambda r: r.pfadd("d:hll", "a", "b", "c"))
    add("pfcount", lambda r: r.pfcount("d:hll"))
    # scripts
    add("eval", lambda r: r.eval("return {1, 'two', KEYS[1], ARGV[1]}", 1, "d:k", "arg"))
    add("eval error", lambda r: r.eval("return redis.call('INCR', KEYS[1])", 1, "d:str"))
    add("eval status", lambda r: r.eval("return redis.status_reply('FINE')", 0))
    add("script exists", lambda r: r.script_exists("0" * 40))
    add("registered script", _script)
    # pipelines and transactions
    add("pipeline", lambda r: _pipeline(r, transaction=False))
    add("transaction", lambda r: _pipeline(r, transaction=True))
    add("pipeline errors in place", _pipeline_errors)
    add("pipeline raises first error", _pipeline_raises)
    add("transaction raises first error", _transaction_raises)
    add("watch transaction", _watch_transaction)
    # server and misc
    add("ping", lambda r: r.ping())
    add("echo", lambda r: r.echo("hello"))
    add("unknown command", lambda r: r.execute_command("NOSUCHCOMMAND", "x"))
    add("wrong arity", lambda r: r.execute_command("GET"))
    add("config get", lambda r: r.config_get("maxmemory-policy"))
    add("client getname", lambda r: r.client_getname())
    add("scan", lambda r: _scan_all(r))
    add("flushdb", lambda r: r.flushdb())
    add("dbsize after flush", lambda r: r.dbsize())
    return c


async def _sorted(awaitable: Awaitable[Any]) -> Any:
    return sorted(await awaitable)


async def _dump_restore(r: Any) -> Any:
    dumped = await r.dump("d:h")
    await r.restore("d:hcopy", 0, dumped)
    return [type(dumped).__name__, await r.hgetall("d:hcopy")]


async def _xpending_range(r: Any) -> Any:
    entries = await r.xpending_range("d:x", "grp", "-", "+", 10)
    return [{k: v for k, v in e.items() if k != "time_since_delivered"} for e in entries]


async def _sscan(r: Any) -> Any:
    cursor, members = await r.sscan("d:s3", 0, count=100)
    return [cursor, sorted(members)]


async def _scan_all(r: Any) -> Any:
    return sorted([key async for key in r.scan_iter(match="d:*", count=1000)])


CALLS = _calls()


def normalize(value: Any) -> Any:
    """Exceptions by class and message; NaN-safe floats; everything else as it is."""
    if isinstance(value, BaseException):
        return ("error", type(value).__name__, str(value))
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, list | tuple):
        return type(value)(normalize(v) for v in value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


async def run_all(client: Any) -> list[Any]:
    await client.flushall()
    results = []
    for _, call in CALLS:
        try:
            value = await call(client)
        except Exception as exc:  # compared like any other result
            value = exc
        results.append(normalize(value))
    return results


# redis-py 8 added legacy_responses=; before it, the only shapes are the legacy ones.
HAS_LEGACY_RESPONSES = "legacy_responses" in inspect.signature(redis.asyncio.Redis).parameters


def _combinations() -> list[Any]:
    """Defaults to defaults (nothing passed on either side), then every explicit combination of
    ``protocol`` and, where the installed redis-py has it, ``legacy_responses``."""
    combos = [pytest.param({}, id="defaults")]
    for protocol in (None, 2, 3):
        combos.append(pytest.param({"protocol": protocol}, id=f"protocol={protocol}"))
        if HAS_LEGACY_RESPONSES:
            for legacy in (True, False):
                options = {"protocol": protocol, "legacy_responses": legacy}
                combos.append(pytest.param(options, id=f"protocol={protocol}-legacy={legacy}"))
    return combos


COMBINATIONS = _combinations()

# redis-py 5 and 6 send "HELLO None" when given protocol=None explicitly, and fail; anypool
# takes an explicit None as "not given", so there it is compared with redis-py given nothing.
REDIS_PY_TAKES_PROTOCOL_NONE = int(redis.__version__.split(".")[0]) >= 7


def _as_redis_py_takes_them(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("protocol", 0) is None and not REDIS_PY_TAKES_PROTOCOL_NONE:
        return {k: v for k, v in options.items() if k != "protocol"}
    return options


@pytest.fixture(scope="module", params=["redis-6.2", "valkey-9.1"])
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """Redis 6.2 (the oldest supported) and Valkey 9.1 (LCS, ZMPOP, ZRANK WITHSCORE...)."""
    binary = find_valkey_server() if request.param.startswith("valkey") else None
    with RedisServer(binary=binary) as server:
        yield server


def test_the_call_list_is_long_enough() -> None:
    assert len(CALLS) >= 220


async def _reference(url: str, options: dict[str, Any]) -> list[Any]:
    client = redis.asyncio.Redis.from_url(url, **_as_redis_py_takes_them(options))
    try:
        return await run_all(client)
    finally:
        await client.aclose()


async def _ours(url: str, options: dict[str, Any]) -> list[Any]:
    async with anypool.RedisPool.from_url(url, max_size=4, **options) as client:
        return await run_all(client)


def _assert_same(expected: list[Any], url: str, options: dict[str, Any]) -> None:
    for backend in BACKENDS:  # uvloop's where installed
        if backend == UVLOOP and not HAVE_UVLOOP:
            continue
        got = run(_ours, url, options, backend=backend)
        mismatches = [
            (name, want, have)
            for (name, _), want, have in zip(CALLS, expected, got, strict=True)
            if want != have
        ]
        assert mismatches == [], (
            f"{backend} {options}: {len(mismatches)} of {len(CALLS)} differ: {mismatches}"
        )


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("options", COMBINATIONS)
def test_anypool_matches_redis_py(
    server: RedisServer, options: dict[str, Any], decode: bool
) -> None:
    """The same arguments (none at all, too) give the same results as redis.asyncio."""
    options = {**options, "decode_responses": decode}
    expected = anyio.run(_reference, server.url, options, backend="asyncio")
    _assert_same(expected, server.url, options)


def test_the_differences_are_really_exercised(server: RedisServer) -> None:
    """The shapes differ between combinations, so equal results above are not vacuous."""
    results = {
        str(p.id): anyio.run(_reference, server.url, p.values[0], backend="asyncio")
        for p in COMBINATIONS
    }
    assert results["protocol=2"] != results["protocol=3"]
    if HAS_LEGACY_RESPONSES:
        assert results["defaults"] != results["protocol=3"]
        assert results["protocol=None-legacy=False"] != results["protocol=None-legacy=True"]


def test_the_default_speaks_redis_py_s_default_protocol(server: RedisServer) -> None:
    """With no protocol given, the wire is the one the installed redis-py uses by default."""

    async def resp(client: Any) -> Any:
        info = await client.client_info()
        return info.get("resp")

    async def resp_of_redis_py() -> Any:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            return await resp(client)
        finally:
            await client.aclose()

    async def resp_of_ours() -> Any:
        async with anypool.RedisPool.from_url(server.url) as client:
            return await resp(client)

    expected = anyio.run(resp_of_redis_py, backend="asyncio")
    if expected is None:
        pytest.skip("this server's CLIENT INFO does not show the RESP version")
    assert str(expected) == ("3" if HAS_LEGACY_RESPONSES else "2")
    for backend in BACKENDS:
        if backend == UVLOOP and not HAVE_UVLOOP:
            continue
        assert run(resp_of_ours, backend=backend) == expected


@pytest.fixture(scope="module")
def server_without_hello() -> Iterator[RedisServer]:
    """A Valkey 9.1 that answers HELLO as Redis 5 did: unknown command."""
    with RedisServer("--rename-command", "HELLO", "", binary=find_valkey_server()) as server:
        yield server


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("options", COMBINATIONS)
def test_a_server_without_hello_gives_redis_py_s_resp2_results(
    server_without_hello: RedisServer, options: dict[str, Any], decode: bool
) -> None:
    """Where RESP3 was wanted and the server cannot speak it, the connection speaks RESP2 and
    the results are redis-py's over RESP2 with the same ``legacy_responses``."""
    options = {**options, "decode_responses": decode}
    url = server_without_hello.url
    as_resp2 = {**options, "protocol": 2}
    expected = anyio.run(_reference, url, as_resp2, backend="asyncio")
    _assert_same(expected, url, options)
