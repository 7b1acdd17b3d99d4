"""A cache folder with a file name that is not UTF-8 (nova never makes one, but anything
can land there) must not stop `cache verify`: the state database stores names as text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _cli_tree import build_tree


def test_verify_survives_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    tree = build_tree(str(tmp_path / "node"))
    odd = os.path.join(os.fsencode(tree.cache_path), b"stray\xffname")
    with open(odd, "wb") as f:
        f.write(b"not a base")
    for _ in range(2):  # the second run prunes and compares against the records
        proc = subprocess.run([sys.executable, "-m", "novakeeper", *tree.cli("cache",
                               "verify")], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert b"Traceback" not in proc.stderr and b"internal error" not in proc.stderr
    assert os.path.exists(odd)  # not a base: never verified, never moved
