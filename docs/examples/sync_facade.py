"""Synchronous code, from any number of threads."""

import os

import anypool

url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
with anypool.BlockingRedisPool.from_url(url) as redis:
    redis.set("greeting", "hello")
    print(redis.get("greeting"))  # b'hello'
    with redis.pipeline() as pipe:
        pipe.set("a", 1).incr("a")
        print(pipe.execute())  # [True, 2]
