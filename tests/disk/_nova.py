"""Nova 34's own disk accounting on a sandbox tree, for tests to compare with.

`run_nova_resources(python, instances_path, domains)` runs tests/disk/nova_resources.py
with the python of nova's side virtualenv (the `side_venv_python("nova",
"NOVAKEEPER_NOVA_VENV")` one) and returns its JSON: nova's `get_available_resource`
figures, `_get_disk_over_committed_size_total()` and, per domain, what
`_get_instance_disk_info_from_config` returned (or raised). The domains' XML is written
in a scratch folder off the measured file system and comes back under "xml".

A domain: {"uuid", "name", "running": bool, "disks": [{"type": "file"|"block"|"network",
"device": "disk"|"cdrom", "path", "format": "qcow2"|"raw"|..., "target": "vda", "bus"
(optional)}]}.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "nova_resources.py"


class NovaRaised(Exception):
    """nova's get_available_resource itself raised: `result["raised"]` says what."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.type: str = result["raised"]["type"]
        super().__init__(f"{self.type}: {result['raised']['message']}")


def run_nova_resources(python: str | os.PathLike[str], instances_path: str | os.PathLike[str],
                       domains: Sequence[dict[str, Any]], *,
                       workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """nova's figures for `domains` defined on a node whose instances live under
    `instances_path`. Raises NovaRaised when nova's own code raised, AssertionError
    (with the script's stderr) when the script failed otherwise."""
    with tempfile.TemporaryDirectory(prefix="nova-resources-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        request = folder / "nova-resources.json"
        request.write_text(json.dumps({"instances_path": os.fspath(instances_path),
                                       "domains": list(domains)}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["PYTHONWARNINGS"] = "ignore"  # eventlet's deprecation banner, on every import
        proc = subprocess.run([os.fspath(python), str(SCRIPT), str(request)],
                              capture_output=True, text=True, timeout=300, env=env,
                              stdin=subprocess.DEVNULL, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode not in (0, 3) or not lines:
            raise AssertionError(f"nova_resources.py exited {proc.returncode}: "
                                 f"{proc.stderr.strip()[-4000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        xml_folder = Path(result["xml_folder"])
        result["xml"] = {p.stem: p.read_text() for p in sorted(xml_folder.glob("*.xml"))}
        result["stderr"] = proc.stderr
    if proc.returncode == 3:
        raise NovaRaised(result)
    return result
