"""The dot-segment check of paths and URLs, and which redirect hops are taken."""

from __future__ import annotations

import pytest

from legato.engine.redirects import RedirectRefused, next_hop, without_userinfo
from legato.model.service import check_path, check_url_path

REFUSED = [
    "../admin",
    "..;/admin",
    "a/..;/admin",
    "a/..;jsessionid=1/admin",
    "/%2e%2e%3b/admin",
    "..%00/admin",
    "\uff0e\uff0e/admin",  # fullwidth dots: `..` once NFKC-normalised
    "%c0%ae%c0%ae/admin",  # overlong UTF-8: not UTF-8 at all
    "%252e%252e/admin",
    "%25252e%25252e/admin",
    "..%2f..%2fadmin",
    "..\\admin",
    ".%2e/admin",
    "./admin",
    "a/%2e/b",
    ".. /admin",
    "a/b%0d%0aX: 1",
    "a/b\tc",
    "a/b%7f",
    "%2525252525252525252e%2525252525252525252e/a",  # still changing after many decodings
]
ALLOWED = [
    "/api/users/1",
    "a/b;v=1/c",
    "/files/100%25",
    "...",
    "a..b/..c/c..",
    "/\u00fcber/x",
    "a/.well-known/x",
    "/search?q=../x",  # the query is not the path
    "",
]


@pytest.mark.parametrize("path", REFUSED)
def test_disguised_dot_segments_and_control_characters_are_refused(path: str) -> None:
    assert check_path(path) is not None


@pytest.mark.parametrize("path", ALLOWED)
def test_ordinary_paths_pass(path: str) -> None:
    assert check_path(path) is None


def test_a_url_path_is_checked_the_same_way() -> None:
    assert check_url_path("https://api.example/x/users/../admin") is not None
    assert check_url_path("https://api.example/x/..;/admin") is not None
    assert check_url_path("https://api.example/x/users/1?next=../a") is None
    assert check_url_path("https://api.example") is None


def test_a_downgrade_from_https_to_http_is_refused() -> None:
    with pytest.raises(RedirectRefused, match="from https to http"):
        next_hop("GET", "https://a.example/x", 302, "http://a.example/x", {}, None)
    with pytest.raises(RedirectRefused, match="re-send the request body"):
        next_hop("PUT", "http://a.example/x", 302, "http://b.example/x", {}, b"{}")


CREDENTIALS = {"Authorization": "Bearer t", "X-Api-Key": "k", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("here", "there"),
    [
        ("http://a.example/x", "https://a.example/x"),  # 80 -> 443
        ("http://a.example:80/x", "https://A.example:443/x"),
        ("http://a.example:8443/x", "https://a.example:8443/x"),  # the same explicit port
    ],
)
def test_an_upgrade_to_https_on_the_same_host_keeps_body_and_credentials(
    here: str, there: str
) -> None:
    method, url, headers, data = next_hop("POST", here, 307, there, CREDENTIALS, b"{}")
    assert (method, url, data) == ("POST", there, b"{}")
    assert headers == CREDENTIALS


@pytest.mark.parametrize(
    "there",
    [
        "https://a.example:9999/other",  # another port: another service on that host
        "https://a.example:8443/x",
        "https://b.example/x",
    ],
)
def test_an_upgrade_to_another_port_or_host_is_another_origin(there: str) -> None:
    with pytest.raises(RedirectRefused, match="re-send the request body"):
        next_hop("POST", "http://a.example:8080/x", 307, there, CREDENTIALS, b"{}")
    _, _, headers, _ = next_hop("GET", "http://a.example:8080/x", 302, there, CREDENTIALS, None)
    assert headers == {"Content-Type": "application/json"}


def test_userinfo_is_taken_out_of_a_redirect_target() -> None:
    assert without_userinfo("http://u:p@b.example:81/s?q=1") == "http://b.example:81/s?q=1"
    _, url, _, _ = next_hop("GET", "http://a.example/", 302, "//u:p@b.example/s", {}, None)
    assert url == "http://b.example/s"
