"""The role table, the throttle of wrong tokens, and the token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.errors import LegatoError
from legato.server.access import (
    ADMIN,
    OPERATE,
    READ,
    Budget,
    Throttle,
    Token,
    Tokens,
    client_key,
    load_tokens,
    role_needed,
    trusted_proxies,
)
from legato.server.audit import parse_since
from legato.server.guard import cut, target_of

RUN = "a" * 32


def test_one_table_says_which_role_each_route_needs() -> None:
    for path in ("/api/runs", f"/api/runs/{RUN}", "/api/workflows/w", "/metrics", "/runs"):
        assert role_needed("GET", path) == READ, path
    for path in (
        "/api/workflows/w/runs",
        "/api/workflows/w/trigger",
        f"/api/runs/{RUN}/cancel",
        f"/api/runs/{RUN}/retry",
        "/api/runs:cancel",
        "/api/runs/retry",
        f"/api/runs/{RUN}/steps/approve/complete",
        "/e/orders",
        "/api/events",
        "/api/schedules/w/pause",
        "/api/schedules/w/unpause",
    ):
        assert role_needed("POST", path) == OPERATE, path
    assert role_needed("POST", "/api/workflows") == ADMIN
    assert role_needed("PUT", "/api/services/s") == ADMIN
    assert role_needed("DELETE", "/api/services/s") == ADMIN
    assert role_needed("GET", "/api/audit") == ADMIN
    assert role_needed("GET", "/api/secrets") == ADMIN
    assert role_needed("POST", "/api/workflows/w/runs/extra") == ADMIN  # not listed: admin
    assert role_needed("PATCH", "/api/anything") == ADMIN


def test_wrong_guesses_block_a_client_for_a_while_and_others_not_at_all() -> None:
    throttle = Throttle(limit=3, window=10, block=30)
    for t in (0.0, 1.0):
        throttle.fail("1.2.3.4", t)
    assert throttle.wait("1.2.3.4", 2.0) == 0
    throttle.fail("1.2.3.4", 20.0)  # the first two are out of the window by now
    assert throttle.wait("1.2.3.4", 20.0) == 0
    throttle.fail("1.2.3.4", 21.0)
    throttle.fail("1.2.3.4", 22.0)
    assert throttle.wait("1.2.3.4", 22.5) == 30
    assert throttle.wait("5.6.7.8", 22.5) == 0
    assert throttle.wait("1.2.3.4", 52.5) == 0  # the block is over


def test_ipv6_clients_are_throttled_per_64_prefix() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("10.1.2.3") == "10.1.2.3"
    throttle = Throttle(limit=3, block=30)
    for i in range(3):  # a new address of the same /64 for each guess
        throttle.fail(f"2001:db8:1:2::{i + 1:x}", 0.0)
    assert throttle.wait("2001:db8:1:2:ffff::9", 1.0) == 29
    assert throttle.wait("2001:db8:1:3::1", 1.0) == 0  # the next /64 is another client


def test_forwarded_headers_are_trusted_only_from_proxies_named() -> None:
    assert trusted_proxies(None) is None and trusted_proxies(" ") is None
    assert trusted_proxies("127.0.0.1, 10.0.0.0/8,::1") == "127.0.0.1,10.0.0.0/8,::1"
    assert trusted_proxies("*") == "*"
    for bad in ("proxy.local", "10.0.0.0/33", "*,127.0.0.1"):
        with pytest.raises(LegatoError, match="--forwarded-allow-ips"):
            trusted_proxies(bad)


def test_a_budget_allows_so_many_a_window_in_all() -> None:
    budget = Budget(limit=3, window=60)
    assert [budget.take(t) for t in (0.0, 1.0, 2.0, 3.0, 59.0)] == [True] * 3 + [False] * 2
    assert budget.take(60.0) and budget.take(61.0)


def test_audited_paths_and_targets_are_cut() -> None:
    assert cut("/api/runs", 512) == "/api/runs"
    assert cut("/e/" + "A" * 600, 512) == "/e/" + "A" * 509 + "...(91 more)"
    assert target_of("/e/" + "B" * 5000, None) == "B" * 512 + "...(4488 more)"


def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    throttle = Throttle(limit=1, block=100, max_clients=50)
    for i in range(1000):
        throttle.fail(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(throttle._blocked) == 50 and len(throttle._failures) == 0


def test_tokens_are_found_by_value_and_names_and_values_are_unique() -> None:
    tokens = Tokens([Token("a", "one-one-one", ADMIN), Token("b", "two-two-two", READ)])
    assert tokens.find("two-two-two") == Token("b", "two-two-two", READ)
    assert tokens.find("two-two-tw") is None and tokens.find("") is None
    with pytest.raises(LegatoError, match="two tokens are named 'a'"):
        Tokens([Token("a", "x" * 20, ADMIN), Token("a", "y" * 20, READ)])
    with pytest.raises(LegatoError, match="the same value"):
        Tokens([Token("a", "x" * 20, ADMIN), Token("b", "x" * 20, READ)])


def test_the_token_file_names_tokens_with_roles(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    file.write_text('[tokens]\nci = { token = "ci-token", role = "operate" }\n')
    tokens = load_tokens("admin-token", str(file))
    assert [(t.name, t.role) for t in tokens.tokens] == [("default", ADMIN), ("ci", OPERATE)]
    for text, problem in (
        ("not toml [", "is not TOML"),
        ("[other]\n", "needs a [tokens] table"),
        ('[tokens]\n"a b" = { token = "x", role = "read" }\n', "a name is 1-64"),
        ('[tokens]\nx = "just-a-token"\n', 'must be { token = "...", role = "read" }'),
        ('[tokens]\nx = { token = "t", role = "read", extra = 1 }\n', "must be {"),
        ('[tokens]\nx = { token = " t", role = "read" }\n', "tokens.x.token: must be a string"),
        ('[tokens]\nx = { token = "t" }\n', "tokens.x.role: must be one of"),
    ):
        file.write_text(text)
        with pytest.raises(LegatoError, match=problem.replace("[", r"\[").replace("{", r"\{")):
            load_tokens(None, str(file))
    with pytest.raises(LegatoError, match="cannot read the token file"):
        load_tokens(None, str(tmp_path / "missing.toml"))
    file.write_text('[tokens]\ndefault = { token = "other-token", role = "read" }\n')
    with pytest.raises(LegatoError, match="two tokens are named 'default'"):
        load_tokens("admin-token", str(file))


def test_short_tokens_are_refused_for_public_addresses_only() -> None:
    tokens = Tokens([Token("default", "short", ADMIN)])
    with pytest.raises(LegatoError, match="'default' has 5 characters"):
        tokens.check_public("0.0.0.0")
    Tokens([Token("default", "x" * 16, ADMIN)]).check_public("0.0.0.0")


def test_the_audit_target_comes_from_the_location_or_the_path() -> None:
    assert target_of("/api/workflows/w/runs", f"/api/runs/{RUN}") == RUN
    assert target_of("/api/workflows", "/api/workflows/w/versions/2") == "w"
    assert target_of(f"/api/runs/{RUN}/cancel", None) == RUN
    assert target_of("/e/orders", None) == "orders"
    assert target_of("/api/schedules/nightly/pause", None) == "nightly"
    assert target_of("/login", "/runs") is None


def test_since_is_a_time_or_a_duration_ago() -> None:
    assert parse_since("1970-01-01T00:01:00Z") == 60.0
    assert parse_since("1970-01-01T00:01:00") == 60.0  # UTC when no offset is given
    assert parse_since("1h", now=7200.0) == 3600.0
    with pytest.raises(ValueError, match="ISO 8601 time or a duration"):
        parse_since("yesterday")
