"""Fetch an image into a cache the way nova 34 does for a spawn, with nova's own code.

Runs under the Python of the venv `.ci/nova-setup` makes:
    python _nova_fetch.py GLANCE_URL TOKEN INSTANCES_PATH IMAGE_ID...
For each image: `nova.virt.libvirt.utils.fetch_image` (-> `nova.virt.images.fetch_to_raw`:
`.part`, deep inspection, `qemu-img info`, conversion to raw through `.converted`, rename)
under nova's external lock `nova-<sha1>` in INSTANCES_PATH/locks, as `Image.cache`'s
`fetch_func_sync` holds it, into INSTANCES_PATH/_base/<sha1(image id)>. Nova's real
`nova.image.glance.API` downloads through glanceclient from GLANCE_URL
(`[glance] api_servers`) with TOKEN in a `RequestContext`. privsep runs inline
(`client_mode = False`, as nova's own PrivsepFixture does). Prints one JSON line:
image id -> the base's path.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    glance_url, token, instances = sys.argv[1], sys.argv[2], sys.argv[3]
    image_ids = sys.argv[4:]
    del sys.argv[1:]
    import nova.conf
    import nova.privsep
    from nova import context, utils
    from nova.virt.libvirt import imagecache
    from nova.virt.libvirt import utils as libvirt_utils

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[], default_config_dirs=[])
    conf.set_override("instances_path", instances)
    conf.set_override("state_path", os.path.dirname(instances))
    conf.set_override("force_raw_images", True)
    conf.set_override("subdirectory_name", "_base", group="image_cache")
    conf.set_override("api_servers", [glance_url], group="glance")
    nova.privsep.sys_admin_pctxt.set_client_mode(False)
    ctx = context.RequestContext(user_id="admin", project_id="admin", auth_token=token)
    lock_path = os.path.join(instances, "locks")
    out = {}
    for image_id in image_ids:
        filename = imagecache.get_cache_fname(image_id)
        target = os.path.join(instances, "_base", filename)

        @utils.synchronized(filename, external=True, lock_path=lock_path)
        def fetch_func_sync(target: str, image_id: str) -> None:
            if not os.path.exists(target):
                libvirt_utils.fetch_image(ctx, target, image_id)

        fetch_func_sync(target, image_id)
        out[image_id] = target
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
