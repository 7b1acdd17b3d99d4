"""Run a real Glance (the PyPI package) on loopback for the tests in this folder.

Runs under the Python of the venv that .ci/glance-setup made, never the project's:
    python _glance_server.py WORKDIR KEYSTONE_URL ADMIN_PASSWORD
It writes a glance-api.conf with an SQLite database and a file store in WORKDIR, runs
`glance-manage db sync` (in this process, to save an interpreter start-up), then serves
Glance's own WSGI application (`glance.common.wsgi_app.init_app`, what uWSGI runs) with
wsgiref on 127.0.0.1 at a free port and prints `READY <port>`. The paste flavor is
`keystone`: keystonemiddleware's auth_token validates every token with that Keystone (as
its admin user), and Glance's default policies (new defaults, scope enforced) apply.
Pages hold 2 images (`limit_param_default`, `api_limit_max`), so every listing follows
Glance's `next` links. It exits when its stdin closes, so a test run that dies takes it
along.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

CONF_TEMPLATE = """\
[DEFAULT]
log_file = {work}/glance-api.log
debug = false
worker_self_reference_url = http://127.0.0.1:{port}
enabled_import_methods = []
limit_param_default = 2
api_limit_max = 2
[database]
connection = sqlite:///{work}/glance.db
[glance_store]
stores = file
default_store = file
filesystem_store_datadir = {work}/images
[paste_deploy]
flavor = {flavor}
config_file = {paste}
[oslo_policy]
enforce_new_defaults = true
enforce_scope = true
"""

AUTHTOKEN_TEMPLATE = """\
[keystone_authtoken]
www_authenticate_uri = {keystone}
auth_url = {keystone}
auth_type = password
username = admin
password = {password}
project_name = admin
user_domain_id = default
project_domain_id = default
service_token_roles_required = true
interface = public
"""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _exit_when_parent_goes() -> None:
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    work, keystone, password = sys.argv[1], sys.argv[2], sys.argv[3]
    del sys.argv[1:]  # oslo.config parses sys.argv as Glance's own options
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    server = _Server(("127.0.0.1", 0), _Quiet)  # listen first: the config names the port
    port = server.server_address[1]
    paste = os.path.join(sys.prefix, "etc", "glance", "glance-api-paste.ini")
    conf = CONF_TEMPLATE.format(work=work, port=port, paste=paste, flavor="keystone")
    conf += AUTHTOKEN_TEMPLATE.format(keystone=keystone, password=password)
    with open(os.path.join(work, "glance-api.conf"), "w") as f:
        f.write(conf)

    from glance.cmd import manage

    sys.argv[1:] = ["--config-file", os.path.join(work, "glance-api.conf"), "db", "sync"]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for READY only
            manage.main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    from oslo_config import cfg

    cfg.CONF.reset()
    cfg.CONF.unregister_opt(manage.command_opt)
    cfg.CONF.clear()
    del sys.argv[1:]

    os.environ["OS_GLANCE_CONFIG_DIR"] = work
    from glance.common import wsgi_app

    app = wsgi_app.init_app()
    logging.getLogger().setLevel(logging.WARNING)
    server.set_app(app)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    print(f"READY {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
