"""Print nova's option names for the groups `novakeeper doctor` checks for unknown options,
as JSON: {group: [name, ...]}, deprecated names included. Run with nova's own python:

    ~/.cache/novakeeper/nova-venv/bin/python tests/doctor/nova_option_names.py \
        > src/novakeeper/doctor/nova_option_names.json

The namespaces are nova's etc/nova/nova-config-generator.conf ones (plus oslo.db, which nova
registers itself): what nova 34 reads from nova.conf. tests/doctor/test_doctor_conf.py
checks the shipped file against this script when nova's venv is there.
"""

from __future__ import annotations

import json
import sys

from oslo_config import generator

NAMESPACES = ["nova.conf", "oslo.limit", "oslo.log", "oslo.messaging", "oslo.policy",
              "oslo.privsep", "oslo.service.periodic_task", "oslo.service.service",
              "oslo.middleware", "oslo.concurrency", "oslo.reports", "oslo.versionedobjects",
              "keystonemiddleware.auth_token", "osprofiler", "os_vif", "os_brick", "oslo.db"]
GROUPS = ("DEFAULT", "api", "image_cache", "libvirt", "vnc", "spice", "cache",
          "oslo_concurrency")


def names() -> dict[str, list[str]]:
    out: dict[str, set[str]] = {g: set() for g in GROUPS}
    for _, groups in generator._list_opts(NAMESPACES):
        for group, opts in groups:
            gname = getattr(group, "name", group) or "DEFAULT"
            for opt in opts:
                if gname in out:
                    out[gname].add(opt.dest)
                    out[gname].add(opt.name)
                for dep in opt.deprecated_opts:
                    dgroup = dep.group or gname
                    if dgroup in out:
                        out[dgroup].add((dep.name or opt.name).replace("-", "_"))
    return {g: sorted(n.replace("-", "_") for n in v) for g, v in out.items()}


if __name__ == "__main__":
    json.dump(names(), sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")
