"""Whether the host firewall lets a new TCP connection to a port in: read from
`iptables-save` (legacy or nft-backed iptables) or `nft -j list ruleset`, walked the way the
kernel walks the INPUT hook for a packet from another host.

Only what decides a console connection is modelled: protocol, destination port (--dport,
multiport --dports, nft `tcp dport` values, ranges and sets), connection state (rules only
for ESTABLISHED/RELATED never match a new connection), jumps and returns, and the chain
policy. A rule limited to some sources or interfaces (-s, -i, ip saddr, iifname) is taken
to let the console proxy in when it accepts, and not to apply when it drops: operators
write such rules for the proxy's network. Rules for the loopback interface never apply.
Anything unreadable is Unavailable (a SKIP).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from novakeeper.doctor.facts import Unavailable

TIMEOUT = 10.0


@dataclass(frozen=True)
class Verdict:
    open: bool
    why: str


@dataclass(frozen=True)
class Rule:
    ports: tuple[tuple[int, int], ...] | None  # None: any port
    proto: str | None  # None: any protocol
    target: str  # ACCEPT, DROP, REJECT, RETURN, a chain, or "" (no verdict: LOG, counters)
    conditional: bool = False  # limited to sources or interfaces
    new_ok: bool = True  # False: only for established/related connections
    text: str = ""

    def matches(self, port: int) -> bool:
        if not self.new_ok or self.proto not in (None, "tcp", "6"):
            return False
        return self.ports is None or any(a <= port <= b for a, b in self.ports)


@dataclass
class Rules:
    source: str  # "iptables-save", "nft"
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    entry: list[str] = field(default_factory=list)
    """The chains hooked on input, in the order the kernel runs them."""

    def verdict(self, port: int) -> Verdict:
        """A packet must get through every chain hooked on input (nft runs each)."""
        if not self.entry:
            return Verdict(True, "no input filter rules")
        passed = Verdict(True, "no rule stops it")
        for chain in self.entry:
            result = self._walk(chain, port, 0)
            if result is None:
                policy = self.policies.get(chain, "ACCEPT").upper()
                if policy != "ACCEPT":
                    return Verdict(False, f"chain {chain} policy {policy}")
                passed = Verdict(True, f"chain {chain} policy ACCEPT")
            elif not result.open:
                return result
            else:
                passed = result
        return passed

    def _walk(self, chain: str, port: int, depth: int) -> Verdict | None:
        if depth > 20:
            return None
        for rule in self.chains.get(chain, []):
            if not rule.matches(port):
                continue
            target = rule.target.upper()
            if target == "ACCEPT":
                return Verdict(True, f"accepted by `{rule.text}`")
            if target in ("DROP", "REJECT"):
                if rule.conditional:
                    continue
                return Verdict(False, f"{target.lower()} by `{rule.text}`")
            if target == "RETURN":
                return None
            if rule.target in self.chains:
                found = self._walk(rule.target, port, depth + 1)
                if found is not None:
                    return found
        return None

    def accept_command(self, first: int, last: int) -> str:
        if self.source == "nft":
            return (f"nft insert rule inet filter input tcp dport {first}-{last} ct state new "
                    "accept  (use your table and chain)")
        return f"iptables -I INPUT -p tcp -m multiport --dports {first}:{last} -j ACCEPT"


def _ports(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        out.append((int(a), int(b or a)))
    return tuple(out)


def parse_iptables_save(text: str) -> Rules:
    """The filter table's chains from `iptables-save` output."""
    rules = Rules("iptables-save")
    table = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "filter" or not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            rules.chains.setdefault(name, [])
            if policy != "-":
                rules.policies[name] = policy
            continue
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        chain = words[1]
        proto = ports = None
        target = ""
        conditional = False
        new_ok = True
        i = 2
        while i < len(words):
            w = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if w in ("-p", "--protocol"):
                proto = nxt.lower()
            elif w in ("--dport", "--destination-port", "--dports", "--destination-ports"):
                ports = _ports(nxt)
            elif w in ("-i", "--in-interface") and nxt == "lo":
                new_ok = False  # loopback: never the console proxy on another host
            elif w in ("-s", "--source", "-i", "--in-interface", "--src-range"):
                conditional = True
            elif w in ("--state", "--ctstate"):
                new_ok = "NEW" in nxt.upper().split(",")
            elif w in ("-j", "--jump", "-g", "--goto"):
                target = nxt
            elif w == "!":
                conditional = True
            i += 1
        rules.chains.setdefault(chain, []).append(
            Rule(ports, proto, target, conditional, new_ok, line))
    if rules.chains.get("INPUT") or rules.policies.get("INPUT", "ACCEPT") != "ACCEPT":
        rules.entry = ["INPUT"]
    return rules


def _nft_ports(right: Any) -> tuple[tuple[int, int], ...] | None:
    if isinstance(right, int):
        return ((right, right),)
    if isinstance(right, dict) and "range" in right:
        a, b = right["range"]
        return ((int(a), int(b)),)
    if isinstance(right, dict) and "set" in right:
        out: list[tuple[int, int]] = []
        for item in right["set"]:
            found = _nft_ports(item)
            if found:
                out.extend(found)
        return tuple(out)
    return None


def parse_nft_json(text: str) -> Rules:
    """Chains hooked on input (inet/ip filter) from `nft -j list ruleset`."""
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Unavailable(f"cannot read nft's JSON: {exc}") from None
    rules = Rules("nft")
    hooked: list[tuple[int, str]] = []
    for item in items:
        if "chain" in item:
            c = item["chain"]
            if c.get("family") not in ("inet", "ip", "ip6"):
                continue
            key = f"{c['family']} {c['table']} {c['name']}"
            rules.chains.setdefault(key, [])
            if c.get("hook") == "input" and c.get("type", "filter") == "filter":
                hooked.append((int(c.get("prio", 0)), key))
                rules.policies[key] = str(c.get("policy", "accept"))
        elif "rule" in item:
            r = item["rule"]
            if r.get("family") not in ("inet", "ip", "ip6"):
                continue
            key = f"{r['family']} {r['table']} {r['chain']}"
            proto = ports = None
            target = ""
            conditional = False
            new_ok = True
            for expr in r.get("expr", []):
                match = expr.get("match")
                if match:
                    left = match.get("left", {})
                    payload = left.get("payload", {}) if isinstance(left, dict) else {}
                    if payload.get("protocol") in ("tcp", "udp") and payload.get(
                            "field") == "dport":
                        proto = payload["protocol"]
                        ports = _nft_ports(match.get("right"))
                    elif isinstance(left, dict) and "ct" in left and left["ct"].get(
                            "key") == "state":
                        right = match.get("right")
                        states = right if isinstance(right, list) else [right]
                        new_ok = "new" in [str(s) for s in states]
                    elif isinstance(left, dict) and "meta" in left and match.get(
                            "right") == "lo":
                        new_ok = False  # iifname "lo"
                    elif isinstance(left, dict) and ("meta" in left or payload.get(
                            "field") == "saddr"):
                        conditional = True
                for verdict in ("accept", "drop", "reject", "return"):
                    if verdict in expr:
                        target = verdict.upper()
                for verdict in ("jump", "goto"):
                    if verdict in expr:
                        target = f"{r['family']} {r['table']} {expr[verdict]['target']}"
            rules.chains.setdefault(key, []).append(
                Rule(ports, proto, target, conditional, new_ok,
                     f"{key} handle {r.get('handle', '?')}"))
    rules.entry = [key for _, key in sorted(hooked)]
    return rules


def read(commands: Sequence[Sequence[str]]) -> Rules:
    """The first command that runs gives the rules; none: Unavailable with why."""
    reasons = []
    for argv in commands:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False)
        except FileNotFoundError:
            reasons.append(f"no {argv[0]}")
            continue
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{argv[0]}: {exc}")
            continue
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]
            reasons.append(f"{argv[0]}: {err}")
            continue
        if "nft" in os_basename(argv[0]) or proc.stdout.lstrip().startswith("{"):
            return parse_nft_json(proc.stdout)
        return parse_iptables_save(proc.stdout)
    raise Unavailable(f"firewall rules not readable ({'; '.join(reasons)})")


def os_basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]
