"""Run a real Keystone (the PyPI package) on loopback for the nova-api tests.

Runs under the Python of the venv that .ci/keystone-setup made, never the project's:
    python _keystone_server.py WORKDIR ADMIN_PASSWORD
It writes a keystone.conf with an SQLite database in WORKDIR, does what an operator does
(`keystone-manage db_sync`, `fernet_setup`, `credential_setup`, `bootstrap`), in this one
process to save the interpreter start-ups, then serves the public API with wsgiref on
127.0.0.1 at a free port and prints `READY <port>`. It exits when its stdin closes, so a
test run that dies takes it along.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

CONF_TEMPLATE = """\
[DEFAULT]
log_file = {work}/keystone.log
[database]
connection = sqlite:///{work}/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = {work}/fernet-keys
[fernet_receipts]
key_repository = {work}/fernet-receipts
[credential]
key_repository = {work}/credential-keys
[identity]
password_hash_rounds = 4
"""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _manage(conf: str, *args: str) -> None:
    """One `keystone-manage` command, in process; the global CONF is reset after it."""
    import keystone.conf
    from keystone.cmd import cli
    from keystone.common import provider_api

    cli.main(argv=["keystone-manage", "--config-file", conf, *args])
    keystone.conf.CONF.reset()
    keystone.conf.CONF.unregister_opt(cli.command_opt)
    keystone.conf.CONF.clear()
    provider_api.ProviderAPIs._clear_registry_instances()  # as keystone's own tests do


def _exit_when_parent_goes() -> None:
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    work, password = sys.argv[1], sys.argv[2]
    del sys.argv[1:]  # keystone's app parses sys.argv as its own options
    os.makedirs(work, exist_ok=True)
    conf = os.path.join(work, "keystone.conf")
    with open(conf, "w") as f:
        f.write(CONF_TEMPLATE.format(work=work))
    # Listen first: the endpoint URL in the catalog needs the port.
    server = _Server(("127.0.0.1", 0), _Quiet)
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/v3"
    owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
             "--keystone-group", grp.getgrgid(os.getgid()).gr_name]
    _manage(conf, "db_sync")
    for repo in ("fernet_setup", "credential_setup"):
        _manage(conf, repo, *owner)
    _manage(conf, "bootstrap", "--bootstrap-password", password,
            "--bootstrap-public-url", url, "--bootstrap-region-id", "RegionOne")

    os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf
    from keystone.server import wsgi

    app = wsgi.initialize_public_application()
    logging.getLogger().setLevel(logging.WARNING)
    server.set_app(app)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    print(f"READY {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
