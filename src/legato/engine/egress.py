"""Where outgoing calls may go: the egress policy of `--egress` / `LEGATO_EGRESS`.

A policy is a list of rules separated by commas or spaces; each is `[!]HOST[:PORTS]`:

- HOST is `*` (any), `loopback` (127.0.0.0/8 and ::1), `private` (10.0.0.0/8, 172.16.0.0/12,
  192.168.0.0/16 and fc00::/7), a name (`billing.internal`), a name wildcard (`*.example.com`: any
  name below it, not the name itself), an IPv4 address or CIDR (`127.0.0.1`, `10.0.0.0/8`), or an
  IPv6 address or CIDR, in brackets when a port follows (`[fd00::/8]:443`). An IPv4 rule never
  matches an IPv6 address (`!127.0.0.0/8` leaves ::1 reachable: write `!loopback`); IPv4-mapped
  IPv6 addresses (::ffff:127.0.0.1) are checked as the IPv4 address they map.
- A bare IPv6 address takes no port; one that would still be an address without its last group
  when that group looks like a port (`::1:80`, `fd00::1:443`) is refused as ambiguous: write
  `[::1]:80` for a port or `[::1:80]` for the address.
- PORTS is a port, a range (`8000-8999`) or `*`; without it every port matches.
- `!` makes a rule a denial.

A connection (the URL's host name, the IP address it is actually made to, its port) is refused when
a denial matches it; otherwise it is allowed when an allowing rule matches it by name or by address,
and refused when none does. A policy with no allowing rule allows everything not denied. No policy
at all allows everything. Whatever the policy, link-local addresses (169.254.0.0/16, fe80::/10),
unspecified ones (0.0.0.0/8, ::, which reach the machine itself) and the well-known cloud metadata
endpoints (AWS, Azure, GCP, Oracle, DigitalOcean: 169.254.169.254, fd00:ec2::254, the ECS task
endpoint 169.254.170.2; Alibaba's 100.100.100.200; Oracle's 192.0.0.192; Azure's WireServer
168.63.129.16; the name metadata.google.internal) are refused unless a rule allows them explicitly:
an address rule inside the refused range (`169.254.0.0/16` for link-local addresses, the address
itself for a metadata address), or the exact name -- `*`, keywords and wide CIDRs such as
`0.0.0.0/0` do not count.

The check is made on the addresses a name resolves to, as connected (see egress_http), so a name
that resolves to a denied address is refused, however its name is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from legato.errors import LegatoError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, why it is refused unless allowed explicitly); the narrowest first, so a message names it.
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    *(
        (ipaddress.ip_network(address), "a cloud metadata address")
        for address in (
            "169.254.169.254/32",  # AWS, Azure, GCP, Oracle, DigitalOcean, OpenStack
            "169.254.170.2/32",  # AWS ECS task metadata and credentials
            "fd00:ec2::254/128",  # AWS over IPv6
            "100.100.100.200/32",  # Alibaba Cloud
            "192.0.0.192/32",  # Oracle Cloud (older instances)
            "168.63.129.16/32",  # Azure WireServer
        )
    ),
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local address"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address"),
    # Connecting to "this host" (0.0.0.0, ::) reaches the machine itself, past a loopback denial.
    (ipaddress.ip_network("0.0.0.0/8"), "an unspecified address"),
    (ipaddress.ip_network("::/128"), "an unspecified address"),
)
_REFUSED_NAMES = frozenset({"metadata.google.internal"})
# Keywords naming sets of addresses; as wide as CIDRs, they never allow a refused address.
_KEYWORDS: dict[str, tuple[IPNetwork, ...]] = {
    "loopback": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
    "private": tuple(
        ipaddress.ip_network(n)
        for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    ),
}
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_PORTLIKE = re.compile(r"^[0-9]{1,5}$")

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_NUMERIC = re.compile(r"^[0-9.]+$")


class EgressSyntaxError(LegatoError):
    """A policy that does not parse; the message names the rule and what is wrong with it."""


class EgressRefused(LegatoError):
    """A call the policy does not allow: the step fails with kind `egress`, never retried."""

    def __init__(self, host: str, address: str | None, port: int, reason: str) -> None:
        self.host = host
        self.address = address
        self.port = port
        self.reason = reason
        where = host if address is None or address == host else f"{host} ({address})"
        super().__init__(f"egress refused: {where} port {port}: {reason}")


@dataclass(frozen=True, slots=True)
class Rule:
    text: str
    deny: bool
    ports: tuple[int, int] | None  # None: every port
    network: IPNetwork | None = None
    name: str | None = None  # exact name
    suffix: str | None = None  # "*.example.com" -> ".example.com"
    keyword: tuple[IPNetwork, ...] = ()  # `loopback`, `private`

    @property
    def any_host(self) -> bool:
        return (
            self.network is None and self.name is None and self.suffix is None and not self.keyword
        )

    def port_matches(self, port: int) -> bool:
        return self.ports is None or self.ports[0] <= port <= self.ports[1]

    def name_matches(self, host: str | None) -> bool:
        if host is None:
            return False
        if self.name is not None:
            return host == self.name
        return self.suffix is not None and host.endswith(self.suffix)

    def matches(self, host: str | None, address: IPAddress | None, port: int) -> bool:
        if not self.port_matches(port):
            return False
        if self.any_host:
            return True
        if self.keyword:
            return address is not None and any(
                address.version == net.version and address in net for net in self.keyword
            )
        if self.network is not None:
            return (
                address is not None
                and address.version == self.network.version
                and (address in self.network)
            )
        return self.name_matches(host)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str  # the rule that decided, or why nothing allowed it


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> EgressPolicy:
        """`None` or blank: the default policy (everything but link-local and metadata)."""
        if text is None:
            return cls()
        entries = [e for e in re.split(r"[\s,]+", text) if e]
        return cls(tuple(_parse_rule(e) for e in entries))

    def __str__(self) -> str:
        return ",".join(r.text for r in self.rules) or "(default: any address)"

    def refuse_name(self, host: str, port: int) -> EgressRefused | None:
        """What is refused by the name alone, before it is resolved."""
        name = normal_name(host)
        for rule in self.rules:
            if rule.deny and rule.network is None and rule.matches(name, None, port):
                return EgressRefused(host, None, port, f"denied by rule {rule.text!r}")
        if name in _REFUSED_NAMES and not self._names_exactly(name, port):
            return EgressRefused(host, None, port, _explicit("a cloud metadata name", name))
        return None

    def check(self, host: str | None, address: str, port: int) -> Verdict:
        """Whether a connection to `address` (resolved from the name `host`, or None when the URL
        gave the address) at `port` is allowed, and by which rule."""
        ip = _address(address)
        name = normal_name(host) if host is not None and host != address else None
        for rule in self.rules:
            if rule.deny and rule.matches(name, ip, port):
                return Verdict(False, f"denied by rule {rule.text!r}")
        if name is not None and name in _REFUSED_NAMES and not self._names_exactly(name, port):
            return Verdict(False, _explicit("a cloud metadata name", name))
        for network, what in _REFUSED_NETWORKS:
            if ip.version == network.version and ip in network:
                if not self._covers_within(ip, network, port):
                    return Verdict(False, _explicit(what, str(ip)))
                break
        allowing = [r for r in self.rules if not r.deny]
        if not allowing:
            return Verdict(True, "no rule allows only some addresses")
        for rule in allowing:
            if rule.matches(name, ip, port):
                return Verdict(True, f"allowed by rule {rule.text!r}")
        return Verdict(False, f"no rule of the egress policy allows it (policy: {self})")

    def refusal(self, host: str, address: str, port: int) -> EgressRefused | None:
        verdict = self.check(host, address, port)
        return None if verdict.allowed else EgressRefused(host, address, port, verdict.reason)

    def _names_exactly(self, name: str, port: int) -> bool:
        return any(not r.deny and r.name == name and r.port_matches(port) for r in self.rules)

    def _covers_within(self, ip: IPAddress, refused: IPNetwork, port: int) -> bool:
        """An explicit allowance: an allowing address rule that lies inside the refused range."""
        for r in self.rules:
            net = r.network
            if r.deny or net is None or net.version != refused.version or ip not in net:
                continue
            if net.subnet_of(refused) and r.port_matches(port):  # type: ignore[arg-type]
                return True
        return False


def normal_name(host: str) -> str:
    return host.lower().rstrip(".")


def _address(text: str) -> IPAddress:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return ip


def _explicit(what: str, example: str) -> str:
    return f"{what}, refused unless allowed explicitly (e.g. --egress '{example}')"


def _parse_rule(entry: str) -> Rule:
    def bad(message: str) -> EgressSyntaxError:
        return EgressSyntaxError(f"egress rule {entry!r}: {message}")

    deny = entry.startswith("!")
    body = entry[1:] if deny else entry
    if not body:
        raise bad("names no host (expected HOST[:PORTS], e.g. 10.0.0.0/8:443)")
    ports_text: str | None = None
    if body.startswith("["):
        host, found, rest = body[1:].partition("]")
        if not found:
            raise bad("has no closing ']'")
        if rest:
            if not rest.startswith(":"):
                raise bad("expected ':PORTS' after ']'")
            ports_text = rest[1:]
        if ":" not in host:
            raise bad("brackets are for IPv6 addresses")
    elif body.count(":") >= 2:
        host = body  # a bare IPv6 address or CIDR: no port
        _refuse_ambiguous(host, bad)
    else:
        host, colon, after = body.partition(":")
        ports_text = after if colon else None
    ports = _parse_ports(ports_text, bad)
    if host == "*":
        return Rule(entry, deny, ports)
    if host.lower() in _KEYWORDS:
        return Rule(entry, deny, ports, keyword=_KEYWORDS[host.lower()])
    if "/" in host or ":" in host or _NUMERIC.match(host):
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            raise bad(f"is not an IP address or CIDR: {exc}") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            # Connections are checked as the IPv4 address they map (see _address): so is the rule.
            low = int(network.network_address) & 0xFFFFFFFF
            network = ipaddress.IPv4Network((low, network.prefixlen - 96))
        return Rule(entry, deny, ports, network=network)
    name = normal_name(host)
    if host.startswith("*"):
        if not name.startswith("*.") or not _NAME.match(name[2:]):
            raise bad(f"{host!r} is not a host name wildcard such as *.example.com")
        return Rule(entry, deny, ports, suffix=name[1:])
    if not _NAME.match(name):
        raise bad(f"{host!r} is not a host name, an IP address, a CIDR or '*'")
    return Rule(entry, deny, ports, name=name)


def _refuse_ambiguous(host: str, bad: Callable[[str], EgressSyntaxError]) -> None:
    """`::1:80` is the address ::1:80, but reads as ::1 port 80: such a rule must say which."""
    if "/" in host:
        return
    address, _, last = host.rpartition(":")
    if not _PORTLIKE.match(last) or not 1 <= int(last) <= 65535:
        return
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return
    raise bad(
        f"is ambiguous: write [{address}]:{last} for port {last} of {address}, or [{host}] for "
        "the address"
    )


def _parse_ports(
    text: str | None, bad: Callable[[str], EgressSyntaxError]
) -> tuple[int, int] | None:
    if text is None or text == "*":
        return None
    low, dash, high = text.partition("-")
    try:
        lo = int(low)
        hi = int(high) if dash else lo
    except ValueError:
        raise bad(f"port {text!r} is not a number, a range such as 8000-8999, or '*'") from None
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise bad(f"port {text!r} is out of 1-65535")
    if lo > hi:
        raise bad(f"port range {text!r} ends before it starts")
    return (lo, hi)
