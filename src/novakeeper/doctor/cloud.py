"""Cloud checks: the Keystone service catalog as clients see it, read with openstacksdk
(clouds.yaml / OS_* credentials, an admin to list services and endpoints). Mistakes here
break clients far from the cause: a second `network` service without endpoints makes the
dashboard fail with "Invalid service catalog service: network" while the CLI works.

The catalog is read once (Facts.catalog); each check is a pure function of it, so the
findings are the same data in the table, the JSON and the tests.
"""

from __future__ import annotations

import concurrent.futures
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from novakeeper.doctor.facts import Facts, Unavailable
from novakeeper.doctor.model import Check, Finding

INTERFACES = ("public", "internal", "admin")
RESTART = "then restart httpd and memcached on the controllers: the catalog is cached"


@dataclass(frozen=True)
class Service:
    id: str
    type: str
    name: str
    enabled: bool = True


@dataclass(frozen=True)
class Endpoint:
    id: str
    service_id: str
    interface: str
    region: str
    url: str
    enabled: bool = True


@dataclass
class Catalog:
    services: list[Service]
    endpoints: list[Endpoint]
    auth_url: str = ""
    by_service: dict[str, list[Endpoint]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Endpoint]] = defaultdict(list)
        for e in self.endpoints:
            if e.enabled:
                grouped[e.service_id].append(e)
        self.by_service = dict(grouped)

    @property
    def active(self) -> list[Service]:
        """The enabled services: Keystone leaves disabled ones (and disabled endpoints)
        out of the catalog clients get, so they cannot confuse them."""
        return [s for s in self.services if s.enabled]

    def endpoints_of(self, service: Service) -> list[Endpoint]:
        """Its enabled endpoints."""
        return self.by_service.get(service.id, [])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _why(exc: BaseException, where: str) -> str:
    """A failure to read the catalog, in one line an operator can act on."""
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    if isinstance(exc, ks.MissingRequiredOptions | ks.MissingAuthPlugin):
        return ("no usable cloud credentials (give --cloud NAME, OS_CLOUD, or OS_AUTH_URL "
                f"and the other OS_* variables): {_one_line(exc)}")
    if isinstance(exc, ks.Unauthorized) or getattr(exc, "status_code", None) == 401:
        return f"Keystone at {where} refused the credentials (HTTP 401): check the password"
    if isinstance(exc, ks.Forbidden) or getattr(exc, "status_code", None) == 403:
        return ("not allowed to list services and endpoints (HTTP 403): use an admin's "
                "credentials")
    if isinstance(exc, ks.ConnectFailure | ks.ConnectTimeout | ks.DiscoveryFailure):
        return f"cannot reach Keystone at {where}: {_one_line(exc)}"
    if isinstance(exc, sdk.ConfigException):
        return f"cloud configuration: {_one_line(exc)}"
    return f"cannot read the catalog from {where}: {type(exc).__name__}: {_one_line(exc)}"


def read_catalog(facts: Facts) -> Catalog:
    """Services and endpoints from Keystone; Unavailable (a SKIP) with one line if not."""
    env = facts.environ
    cloud = facts.cloud or env.get("OS_CLOUD")
    if cloud is None:
        try:
            cloud = facts.settings().nova_api_cloud
        except Unavailable:
            cloud = None
    if cloud is None and not env.get("OS_AUTH_URL"):
        raise Unavailable("no cloud credentials (give --cloud NAME, OS_CLOUD, or OS_AUTH_URL "
                          "and the other OS_* variables)")
    try:
        import openstack
    except ImportError:
        raise Unavailable("openstacksdk is not installed (pip install "
                          "'novakeeper[nova-api]')") from None
    where = env.get("OS_AUTH_URL", f"cloud {cloud!r}")
    conn = None
    try:
        conn = openstack.connect(cloud=cloud, api_timeout=facts.timeout)
        where = str(conn.config.get_auth_args().get("auth_url") or where)
        ident: Any = conn.identity  # v3 (v2 has no service listing)
        services = [Service(s.id, s.type, s.name or "", bool(s.is_enabled))
                    for s in ident.services()]
        endpoints = [Endpoint(e.id, e.service_id, e.interface, e.region_id or "", e.url,
                              bool(e.is_enabled)) for e in ident.endpoints()]
    except Exception as exc:  # every failure is a one-line SKIP
        raise Unavailable(_why(exc, where)) from None
    finally:
        if conn is not None:
            conn.close()
    return Catalog(services, endpoints, where)


def _svc(s: Service, catalog: Catalog) -> str:
    n = len(catalog.endpoints_of(s))
    return f"{s.id} ({s.name or 'no name'}, {n} endpoint{'s' if n != 1 else ''})"


def check_duplicates(facts: Facts) -> Iterator[Finding]:
    catalog = facts.catalog()
    by_type: dict[str, list[Service]] = defaultdict(list)
    for s in catalog.active:
        by_type[s.type].append(s)
    found = False
    for kind, services in sorted(by_type.items()):
        if len(services) < 2:
            continue
        found = True
        full = [s for s in services if catalog.endpoints_of(s)]
        empty = [s for s in services if not catalog.endpoints_of(s)]
        listed = ", ".join(_svc(s, catalog) for s in services)
        data: dict[str, Any] = {"type": kind, "services": [s.id for s in services],
                                "keep": [s.id for s in full], "delete": [s.id for s in empty]}
        if full and empty:
            keep = " and ".join(s.id for s in full)
            yield DUPLICATES.fail(
                f"{len(services)} services of type {kind}: {listed}; clients that pick "
                f"{' or '.join(s.id for s in empty)} find no endpoint (dashboard: 'Invalid "
                f"service catalog service: {kind}'); keep {keep}, the one with endpoints",
                f"openstack service delete {' '.join(s.id for s in empty)}  ({RESTART})",
                **data)
        elif full:
            yield DUPLICATES.warn(
                f"{len(services)} services of type {kind}, each with endpoints: {listed}; "
                "clients pick either",
                f"openstack endpoint list --service {kind}: keep the service whose URLs are "
                "right, `openstack service delete ID` the other", **data)
        else:
            yield DUPLICATES.fail(
                f"{len(services)} services of type {kind}, none with endpoints: {listed}",
                f"openstack service delete {' '.join(s.id for s in services[1:])}, then "
                f"`openstack endpoint create` public/internal/admin for {services[0].id}",
                **data)
    if not found:
        yield DUPLICATES.ok(f"{len(by_type)} service types, each registered once")


def check_empty(facts: Facts) -> Iterator[Finding]:
    catalog = facts.catalog()
    counts: dict[str, int] = defaultdict(int)
    for s in catalog.active:
        counts[s.type] += 1
    found = False
    for s in catalog.active:
        if catalog.endpoints_of(s) or counts[s.type] > 1:  # duplicates: see above
            continue
        found = True
        yield EMPTY.warn(
            f"service {s.id} ({s.type}, {s.name or 'no name'}) has no endpoints: clients "
            f"asking for {s.type} fail",
            f"openstack endpoint create --region REGION {s.id} public URL (and internal, "
            f"admin), or openstack service delete {s.id} if {s.type} is not deployed",
            service=s.id, type=s.type)
    if not found:
        yield EMPTY.ok(f"every enabled service has endpoints ({len(catalog.active)} "
                       "services)")


def check_orphans(facts: Facts) -> Iterator[Finding]:
    catalog = facts.catalog()
    ids = {s.id for s in catalog.services}
    orphans = [e for e in catalog.endpoints if e.service_id not in ids]
    for e in orphans:
        yield ORPHANS.fail(
            f"endpoint {e.id} ({e.interface}, {e.region or 'no region'}, {e.url}) names "
            f"service {e.service_id}, which does not exist",
            f"openstack endpoint delete {e.id}", endpoint=e.id, service=e.service_id)
    if not orphans:
        yield ORPHANS.ok(f"every endpoint's service exists ({len(catalog.endpoints)} "
                         "endpoints)")


def check_interfaces(facts: Facts) -> Iterator[Finding]:
    catalog = facts.catalog()
    found = False
    for s in catalog.active:
        regions: dict[str, set[str]] = defaultdict(set)
        for e in catalog.endpoints_of(s):
            regions[e.region].add(e.interface)
        for region, have in sorted(regions.items()):
            missing = [i for i in INTERFACES if i not in have]
            if not missing:
                continue
            found = True
            url = next(e.url for e in catalog.endpoints_of(s) if e.region == region)
            yield INTERFACES_CHECK.warn(
                f"service {s.id} ({s.type}, {s.name or 'no name'}) in region "
                f"{region or '(none)'} has {', '.join(sorted(have))} but no "
                f"{' or '.join(missing)} endpoint",
                "; ".join(f"openstack endpoint create --region {region} {s.id} {i} {url}"
                          for i in missing) + "  (with that interface's URL)",
                service=s.id, type=s.type, region=region, missing=missing)
    if not found:
        yield INTERFACES_CHECK.ok("every service has public, internal and admin endpoints in "
                                  "each of its regions")


def probe(url: str, timeout: float) -> str | None:
    """None if something answers HTTP at `url` (any status), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"),
                                    timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # 300, 401, 404: a server answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return _one_line(reason if isinstance(reason, BaseException) else exc)


def check_probe(facts: Facts) -> Iterator[Finding]:
    if not facts.probe:
        yield PROBE.skip("not asked: run with --probe to reach every endpoint URL")
        return
    catalog = facts.catalog()
    types = {s.id: s.type for s in catalog.services}
    endpoints: Sequence[Endpoint] = catalog.endpoints
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda e: probe(e.url, facts.timeout), endpoints))
    bad = [(e, why) for e, why in zip(endpoints, results, strict=True) if why]
    for e, why in bad:
        yield PROBE.warn(
            f"endpoint {e.id} ({types.get(e.service_id, '?')} {e.interface}, "
            f"{e.region or 'no region'}) {e.url}: unreachable within {facts.timeout:g} s: "
            f"{why}",
            f"check the service and the network to it, or correct the URL: openstack "
            f"endpoint set --url URL {e.id}", endpoint=e.id, url=e.url, reason=why)
    if not bad:
        yield PROBE.ok(f"all {len(endpoints)} endpoint URLs answer")



DUPLICATES = Check(
    "cloud.duplicate-services", "services registered twice", "services of one type "
    "registered more than once in Keystone", "`openstack service delete ID` of the entries "
    "without endpoints (naming the one to keep), then restart httpd and memcached",
    check_duplicates)
EMPTY = Check(
    "cloud.empty-services", "services without endpoints", "services with no endpoint at "
    "all", "`openstack endpoint create`, or `openstack service delete ID`", check_empty)
ORPHANS = Check(
    "cloud.orphan-endpoints", "endpoints of missing services", "endpoints whose service id "
    "is not a service", "`openstack endpoint delete ID`", check_orphans)
INTERFACES_CHECK = Check(
    "cloud.interfaces", "missing interfaces", "a service with endpoints in a region but not "
    "all of public, internal and admin", "the `openstack endpoint create` to run",
    check_interfaces)
PROBE = Check(
    "cloud.probe", "endpoints reachable", "with --probe: an HTTP GET of every endpoint URL "
    "with --timeout (any HTTP answer counts)", "`openstack endpoint set --url`, or the "
    "service to start", check_probe)

CHECKS: tuple[Check, ...] = (DUPLICATES, EMPTY, ORPHANS, INTERFACES_CHECK, PROBE)
