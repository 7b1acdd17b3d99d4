"""`python -m novakeeper.fleet.checkconf FILE...`: load a configuration exactly as the
commands do and say in one line what is wrong with it. The Ansible role validates the
file it writes with this before putting it in place."""

from __future__ import annotations

import sys

from novakeeper import settings
from novakeeper.errors import NovakeeperError


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m novakeeper.fleet.checkconf FILE...", file=sys.stderr)
        return 2
    try:
        settings.load(argv)
    except NovakeeperError as exc:
        print(f"novakeeper: error: {exc.message}", file=sys.stderr)
        return int(exc.code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
