#!/usr/bin/env python3
"""Benchmark: what image naming costs a pass when Glance's answer is fresh in the state
database (the usual pass: Glance is asked only every glance_refresh_seconds).

    python bench/glance.py [--images 10000] [--cached 200] [--runs 20]

Stores a catalog of IMAGES images (a Glance listing, as images/catalog.py keeps it) in a
throwaway state database, then times, interleaved run by run:

* all: reading the whole stored catalog (what a pass did before it passed the cache's
  hashes), the baseline;
* cached: what a pass does now, `catalog.refresh(..., wanted=<the cache's hashes>)` for a
  cache holding CACHED of those images plus a quarter as many never listed.

Glance itself is never asked (the test suite talks to a real one): the bench fails if the
refresh tries. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence

from novakeeper.cache.layout import image_hash
from novakeeper.images import catalog
from novakeeper.state.db import open_state


def never() -> object:
    raise SystemExit("the bench asked Glance: the stored catalog was not used")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--cached", type=int, default=200)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_state(os.path.join(tmp, "state.db"), write=True)
        now = time.time()
        hashes = [image_hash(str(uuid.uuid4())) for _ in range(args.images)]
        with db.write() as conn:
            conn.executemany(
                "INSERT INTO glance_images (hash, image_id, name, status, visibility, "
                "hash_algo, hash_value, checked_at) VALUES (?, ?, ?, 'active', 'public', "
                "'sha512', ?, ?)",
                [(h, f"id-{i}", f"image-{i}", h * 3, now) for i, h in enumerate(hashes)])
            conn.execute("INSERT INTO glance_refresh (id, at, ok, sees_all, listed) "
                         "VALUES (1, ?, 1, 1, ?)", (now, args.images))
        wanted = set(hashes[:args.cached]) | {
            image_hash(str(uuid.uuid4())) for _ in range(args.cached // 4)}
        times: dict[str, list[float]] = {"all": [], "cached": []}
        for _ in range(args.runs):
            for label, want in (("all", None), ("cached", wanted)):
                t0 = time.perf_counter()
                cat = catalog.refresh(db, never, now + 1, 600,  # type: ignore[arg-type]
                                      wanted=want)
                times[label].append(time.perf_counter() - t0)
                assert not cat.asked
        db.close()
    a, c = statistics.median(times["all"]), statistics.median(times["cached"])
    print(f"images {args.images}, cached {args.cached} (+{args.cached // 4} never listed), "
          f"runs {args.runs}")
    print(f"  all     {a * 1e3:8.2f} ms")
    print(f"  cached  {c * 1e3:8.2f} ms   cached/all {c / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
