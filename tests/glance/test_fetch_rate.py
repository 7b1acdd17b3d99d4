"""`cache fetch --rate-limit`: the download from the real Glance goes through the token
bucket, byte for byte, and the fetch takes at least bytes / rate on the bucket's clock.
The clock is a fake one that only the limiter's sleeps move (no wall-clock timing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cloud import Cloud, cloud_fixture, glance_env  # noqa: F401 - the fixture

from novakeeper.cache import fetch as fetch_mod
from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.layout import image_hash
from novakeeper.cache.locks import NovaLocks, nova_lock_dir
from novakeeper.integrity.checksum import RateLimiter
from novakeeper.integrity.glance import Glance

MIB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        self.slept += seconds


@pytest.mark.parametrize("limit_mib", [1.0, 4.0])
def test_fetch_honours_the_rate_limit(tmp_path: Path, cloud: Cloud,
                                      monkeypatch: pytest.MonkeyPatch,
                                      limit_mib: float) -> None:
    for key, value in glance_env(cloud).items():
        monkeypatch.setenv(key, value)
    data = os.urandom(6 * MIB)
    source = tmp_path / "image.raw"
    source.write_bytes(data)
    image = cloud.upload(source, "raw", f"rate-{limit_mib}")
    instances = tmp_path / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    fake = FakeClock()
    limiter = RateLimiter(limit_mib * MIB, clock=fake.clock, sleep=fake.sleep)
    glance = Glance("admin")
    try:
        got = fetch_mod.fetch(image.id, str(cache), glance,
                              NovaLocks(nova_lock_dir(str(instances)), 5.0), False,
                              BudgetConfig(), limiter)
    finally:
        glance.close()
    assert got.action == "fetched" and got.bytes == len(data)
    assert (cache / image_hash(image.id)).read_bytes() == data
    # the bucket starts empty and holds at most a burst: every byte beyond it waited
    least = (len(data) - limiter.burst) / limiter.rate
    assert least <= fake.slept <= len(data) / limiter.rate + 1e-6
