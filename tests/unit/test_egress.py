"""The egress policy's syntax and its decisions, on addresses as they are connected to."""

from __future__ import annotations

import pytest

from legato.engine.egress import EgressPolicy, EgressSyntaxError


def allowed(policy: str | None, host: str | None, address: str, port: int = 80) -> bool:
    return EgressPolicy.parse(policy).check(host, address, port).allowed


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("*", 1),
        ("10.0.0.0/8:443, billing.internal:8080 127.0.0.1", 3),
        ("*.example.com:8000-8999", 1),
        ("[::1]:8080,[fd00::/8],::1,!fe80::/64", 4),
        ("[::1:80], 1:2:3:4:5:6:7:80, fd00:ec2::254, ::ffff:10.0.0.1", 4),
        ("!loopback, private:443, [fd00::/8]", 3),
        ("!127.0.0.0/8", 1),
        ("", 0),
        ("  ,, ", 0),
        ("localhost:*", 1),
    ],
)
def test_parses(text: str, count: int) -> None:
    assert len(EgressPolicy.parse(text).rules) == count


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10.0.0.1/8", "host bits set"),
        ("300.1.2.3", "not an IP address"),
        ("127.1", "not an IP address"),
        ("host:0", "out of 1-65535"),
        ("host:70000", "out of 1-65535"),
        ("host:http", "not a number"),
        ("host:9-1", "ends before it starts"),
        ("[::1", "no closing"),
        ("[::1]8080", "expected ':PORTS'"),
        ("[example.com]:80", "brackets are for IPv6"),
        ("bad_name!:80", "not a host name"),
        ("*.", "wildcard"),
        ("!", "names no host"),
        ("a..b", "not a host name"),
        ("::1:80", r"ambiguous: write \[::1\]:80 for port 80 of ::1, or \[::1:80\]"),
        ("!fd00::1:443", r"write \[fd00::1\]:443"),
    ],
)
def test_refuses_bad_rules_naming_them(text: str, says: str) -> None:
    with pytest.raises(EgressSyntaxError, match=says) as caught:
        EgressPolicy.parse(text)
    assert repr(text.strip()) in str(caught.value) or text in str(caught.value)


def test_no_policy_allows_all_but_link_local_and_metadata() -> None:
    assert allowed(None, "example.com", "93.184.216.34", 443)
    assert allowed(None, None, "127.0.0.1", 5432)
    assert not allowed(None, None, "169.254.169.254")
    assert not allowed(None, None, "169.254.1.1")
    assert not allowed(None, None, "fe80::1")
    assert not allowed(None, None, "fe80::1%eth0")
    assert not allowed(None, None, "fd00:ec2::254")
    assert not allowed(None, None, "::ffff:169.254.169.254")  # IPv4-mapped is the same address
    assert not allowed(None, None, "0.0.0.0")  # reaches this machine
    assert not allowed("!127.0.0.0/8", None, "0.0.0.0")
    assert not allowed(None, None, "::")
    assert allowed("0.0.0.0", None, "0.0.0.0")
    assert not allowed(None, "metadata.google.internal", "10.1.2.3")
    assert not allowed(None, "Metadata.Google.Internal.", "10.1.2.3")
    assert EgressPolicy.parse(None).refuse_name("metadata.google.internal", 80) is not None


def test_metadata_needs_an_explicit_rule() -> None:
    assert not allowed("*", None, "169.254.169.254")
    assert not allowed("0.0.0.0/0", None, "169.254.169.254")
    assert allowed("169.254.169.254", None, "169.254.169.254")
    assert allowed("169.254.169.254:80", None, "169.254.169.254", 80)
    assert not allowed("169.254.169.254:80", None, "169.254.169.254", 81)
    # Allowing link-local addresses does not allow the metadata address among them.
    assert allowed("169.254.0.0/16", None, "169.254.1.1")
    assert not allowed("169.254.0.0/16", None, "169.254.169.254")
    assert not allowed("*.internal", "metadata.google.internal", "10.0.0.1")
    assert allowed("metadata.google.internal", "metadata.google.internal", "10.0.0.1")
    # An allowed name that resolves to the metadata address is still refused.
    assert not allowed("metadata.google.internal", "metadata.google.internal", "169.254.169.254")
    assert allowed("fe80::/10", None, "fe80::1")


def test_every_well_known_metadata_address_is_refused_by_default() -> None:
    for address in (
        "100.100.100.200",  # Alibaba
        "169.254.170.2",  # AWS ECS
        "192.0.0.192",  # Oracle
        "168.63.129.16",  # Azure WireServer
        "::ffff:100.100.100.200",
    ):
        verdict = EgressPolicy.parse("*").check(None, address, 80)
        assert not verdict.allowed and "cloud metadata" in verdict.reason, address
    assert not allowed("100.64.0.0/10", None, "100.100.100.200")
    assert allowed("100.100.100.200", None, "100.100.100.200")


def test_loopback_and_private_keywords_cover_ipv4_ipv6_and_mapped_forms() -> None:
    for address in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
        assert not allowed("!loopback", "localhost", address), address
    assert allowed("!loopback", None, "10.0.0.1")
    assert allowed("!127.0.0.0/8", None, "::1")  # an IPv4 rule: why the keyword exists
    assert allowed("loopback:8080", None, "::1", 8080)
    assert not allowed("loopback:8080", None, "::1", 8081)
    for address in ("10.1.1.1", "172.31.0.1", "192.168.9.9", "fd12::1", "::ffff:192.168.0.1"):
        assert allowed("private", None, address), address
        assert not allowed("!private", None, address), address
    for address in ("172.32.0.1", "8.8.8.8", "2001:db8::1", "127.0.0.1"):
        assert not allowed("private", None, address), address
    # A keyword is as wide as a CIDR: it does not allow a metadata address inside it.
    assert not allowed("private", None, "fd00:ec2::254")
    # A rule written as an IPv4-mapped address matches the IPv4 address it maps.
    assert not allowed("!::ffff:127.0.0.0/104", None, "127.0.0.1")
    assert allowed("::ffff:10.0.0.1", None, "10.0.0.1")


def test_ports_and_cidrs() -> None:
    policy = "10.0.0.0/8:443, [fd00::/8]:8000-8999"
    assert allowed(policy, "svc", "10.2.3.4", 443)
    assert not allowed(policy, "svc", "10.2.3.4", 80)
    assert not allowed(policy, "svc", "11.0.0.1", 443)
    assert allowed(policy, None, "fd00::1", 8500)
    assert not allowed(policy, None, "fd00::1", 9000)
    assert not allowed("10.0.0.0/8", None, "::ffff:11.0.0.1")
    assert allowed("10.0.0.0/8", None, "::ffff:10.0.0.1")


def test_names_match_the_url_host_and_addresses_the_resolved_ip() -> None:
    assert allowed("billing.internal:8080", "billing.internal", "10.9.9.9", 8080)
    assert allowed("billing.internal:8080", "BILLING.internal.", "10.9.9.9", 8080)
    assert not allowed("billing.internal:8080", "billing.internal", "10.9.9.9", 8081)
    assert not allowed("billing.internal", "other.internal", "10.9.9.9")
    assert allowed("*.example.com", "a.b.example.com", "1.2.3.4")
    assert not allowed("*.example.com", "example.com", "1.2.3.4")
    assert not allowed("*.example.com", "badexample.com", "1.2.3.4")
    # An address written in the URL is no name: a name rule does not allow it.
    assert not allowed("localhost", None, "127.0.0.1")
    # The resolved address of any name satisfies an address rule.
    assert allowed("127.0.0.1:8080", "localhost", "127.0.0.1", 8080)


def test_denials_win_over_allowances_and_apply_after_resolution() -> None:
    policy = "localhost, !127.0.0.0/8, !::1"
    assert not allowed(policy, "localhost", "127.0.0.1")
    assert not allowed(policy, "localhost", "::1")
    verdict = EgressPolicy.parse(policy).check("localhost", "127.0.0.1", 80)
    assert verdict.reason == "denied by rule '!127.0.0.0/8'"
    # Only denials: everything else is allowed.
    assert allowed("!10.0.0.0/8, !*.internal", "example.com", "1.2.3.4")
    assert not allowed("!10.0.0.0/8, !*.internal", "db.internal", "1.2.3.4")
    assert not allowed("!10.0.0.0/8", "example.com", "10.0.0.5")
    assert EgressPolicy.parse("!*.internal").refuse_name("db.internal", 80) is not None


def test_refusal_names_host_address_port_and_rule() -> None:
    refused = EgressPolicy.parse("127.0.0.1:8080").refusal("localhost", "127.0.0.1", 9090)
    assert refused is not None
    text = str(refused)
    assert "localhost (127.0.0.1) port 9090" in text
    assert "127.0.0.1:8080" in text
    metadata = EgressPolicy.parse(None).refusal("169.254.169.254", "169.254.169.254", 80)
    assert metadata is not None
    assert "169.254.169.254 port 80: a cloud metadata address" in str(metadata)


def test_follow_redirects_is_a_boolean_of_services_and_http_steps() -> None:
    from legato.errors import DefinitionError
    from legato.model.build import build_workflow
    from legato.model.service import Service

    service = Service.from_dict({"name": "s", "base_url": "http://s/", "follow_redirects": True})
    assert service.follow_redirects and service.to_dict()["follow_redirects"] is True
    assert (
        "follow_redirects"
        not in Service.from_dict({"name": "s", "base_url": "http://s/"}).to_dict()
    )
    with pytest.raises(DefinitionError, match="follow_redirects: must be a boolean"):
        Service.from_dict({"name": "s", "base_url": "http://s/", "follow_redirects": "yes"})
    step = {"http": {"url": "http://x/", "follow_redirects": 1}}
    with pytest.raises(
        DefinitionError, match=r"steps\.a\.http\.follow_redirects: must be a boolean"
    ):
        build_workflow({"name": "x", "steps": {"a": step}})
