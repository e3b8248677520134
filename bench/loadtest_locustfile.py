"""Locust driving an open-loop Poisson schedule, for bench.loadtest_capacity (run by Locust, not imported).

Locust's users are closed loops; to hold an arrival schedule the one user below precomputes Poisson
arrival times (LT_RATE per second for LT_DURATION seconds), sleeps (gevent) until each one and spawns a
greenlet that sends the streamed request with Locust's FastHttpUser client, recording how late it started.
The lateness list is written to LT_OUT as JSON when the schedule is done.
"""

from __future__ import annotations

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, task
from locust.exception import StopUser

BODY = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "hello " * 24}],
    "max_tokens": 8,
    "stream": True,
    "stream_options": {"include_usage": True},
}


class OpenLoop(FastHttpUser):
    concurrency = 1000  # connections of this user's pool: never the limit here
    network_timeout = 60.0
    connection_timeout = 10.0

    @task
    def schedule(self) -> None:
        rate = float(os.environ["LT_RATE"])
        duration = float(os.environ["LT_DURATION"])
        rng = random.Random(0)
        offsets, t = [], 0.0
        while True:
            t += rng.expovariate(rate)
            if t >= duration:
                break
            offsets.append(t)
        lateness: list[float] = []
        errors = [0]
        body = json.dumps(BODY)
        t0 = time.monotonic() + 0.2

        def one(at: float) -> None:
            lateness.append(time.monotonic() - at)
            with self.client.post(
                "/v1/chat/completions", data=body, headers={"content-type": "application/json"}, catch_response=True
            ) as response:
                if response.status_code != 200 or b"[DONE]" not in (response.content or b""):
                    errors[0] += 1
                    response.failure("bad stream")

        greenlets = []
        for offset in offsets:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            greenlets.append(gevent.spawn(one, t0 + offset))
        gevent.joinall(greenlets, timeout=60)
        with open(os.environ["LT_OUT"], "w") as handle:
            json.dump({"scheduled": len(offsets), "lateness": lateness, "errors": errors[0]}, handle)
        raise StopUser()
