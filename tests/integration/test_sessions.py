"""Sessions, tokens and the audit log on real `legato serve` processes: UI sessions are random,
server-side, expire, end at logout and with their token; wrong tokens are throttled per client; short
tokens are refused on public addresses; named tokens have roles; every change is audited."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legato.client import ApiError, Client
from tests.integration.serverprocess import ServerProcess, free_port, start_server

ADMIN = "admin-token-0123456789"
OPERATE = "operate-token-0123456789"
READ = "read-token-0123456789"
TOKENS = f"""
[tokens]
ops = {{ token = "{ADMIN}", role = "admin" }}
ci = {{ token = "{OPERATE}", role = "operate" }}
dash = {{ token = "{READ}", role = "read" }}
"""
WORKFLOW = {"name": "audited", "steps": {"pause": {"wait": "1h"}}}


def login(url: str, token: str) -> httpx.Cookies:
    """Sign in with the form and return the session cookie it set."""
    answer = httpx.post(url + "/login", data={"token": token, "next": "/runs"})
    assert answer.status_code == 303, answer.text
    return answer.cookies


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address: another client to the server."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("roles")
    file = tmp / "tokens.toml"
    file.write_text(TOKENS)
    file.chmod(0o644)  # readable by others: the server warns
    proc = start_server(tmp, "--token-file", str(file), name="roles")
    yield proc
    proc.stop()


def test_each_sign_in_is_a_new_session_that_logout_ends_everywhere(tmp_path: Path) -> None:
    token = "s3cret-s3cret-s3cret"
    server = start_server(tmp_path, env={"LEGATO_API_TOKEN": token}, name="a")
    other = start_server(tmp_path, env={"LEGATO_API_TOKEN": token}, name="b")
    try:
        first, second = login(server.url, token), login(server.url, token)
        name = next(iter(first.keys()))
        assert first[name] != second[name] and token not in first[name]
        with httpx.Client(base_url=server.url, cookies=first) as http:
            assert http.get("/api/runs").status_code == 200
            copy = dict(http.cookies)
            assert http.post("/logout").status_code == 303
        assert httpx.get(server.url + "/api/runs", cookies=copy).status_code == 401
        assert httpx.get(server.url + "/api/runs", cookies=second).status_code == 200
        # Another server with the same token but its own store does not know the session.
        other_name = "legato_session_" + other.url.rsplit(":", 1)[1]
        stolen = {other_name: second[name]}
        assert httpx.get(other.url + "/api/runs", cookies=stolen).status_code == 401
    finally:
        server.stop()
        other.stop()


def test_a_session_expires_and_dies_with_its_token(tmp_path: Path) -> None:
    token = "first-token-0123456789"
    server = start_server(tmp_path, "--session-ttl", "2s", env={"LEGATO_API_TOKEN": token})
    short = login(server.url, token)
    assert (
        "Max-Age=2"
        in httpx.post(server.url + "/login", data={"token": token}).headers["set-cookie"]
    )
    assert httpx.get(server.url + "/api/runs", cookies=short).status_code == 200
    time.sleep(2.2)
    assert httpx.get(server.url + "/api/runs", cookies=short).status_code == 401
    server.stop()

    same = start_server(tmp_path, db=server.db, env={"LEGATO_API_TOKEN": token})
    kept = login(same.url, token)
    same.stop()
    # The session is in the store: the same token on the next start still honours it...
    again = start_server(tmp_path, db=server.db, env={"LEGATO_API_TOKEN": token})
    port = again.url.rsplit(":", 1)[1]
    cookie = {f"legato_session_{port}": next(iter(kept.values()))}
    assert httpx.get(again.url + "/api/runs", cookies=cookie).status_code == 200
    again.stop()
    # ...and a new token ends every session made with the old one.
    changed = start_server(tmp_path, db=server.db, env={"LEGATO_API_TOKEN": "second-token-0123456"})
    try:
        port = changed.url.rsplit(":", 1)[1]
        cookie = {f"legato_session_{port}": next(iter(kept.values()))}
        assert httpx.get(changed.url + "/api/runs", cookies=cookie).status_code == 401
    finally:
        changed.stop()


def test_sessions_are_shared_by_processes_on_one_postgresql(shared_db: str, tmp_path: Path) -> None:
    token = "shared-token-0123456789"
    env = {"LEGATO_API_TOKEN": token}
    one = start_server(tmp_path, db=shared_db, env=env, name="one")
    two = start_server(tmp_path, "--api-only", db=shared_db, env=env, name="two")
    try:
        session = next(iter(login(one.url, token).values()))
        on_two = {"legato_session_" + two.url.rsplit(":", 1)[1]: session}
        on_one = {"legato_session_" + one.url.rsplit(":", 1)[1]: session}
        assert httpx.get(two.url + "/api/runs", cookies=on_two).status_code == 200
        assert httpx.post(two.url + "/logout", cookies=on_two).status_code == 303
        assert httpx.get(one.url + "/api/runs", cookies=on_one).status_code == 401
    finally:
        two.stop()
        one.stop()


def test_wrong_tokens_are_throttled_per_client(roles: ServerProcess) -> None:
    started = time.monotonic()
    with from_address("127.0.0.2") as guesser:
        codes = Counter(
            guesser.get(roles.url + "/api/runs", headers=bearer(f"guess-{i}")).status_code
            for i in range(300)
        )
        assert codes[401] == 10 and codes[429] == 290, codes
        refused = guesser.get(roles.url + "/api/runs", headers=bearer(READ))
        assert refused.status_code == 429  # even a right token, while the address is refused
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"] == "too_many_requests"
    elapsed = time.monotonic() - started
    # Another client is not slowed down.
    answer = httpx.get(roles.url + "/api/runs", headers=bearer(READ))
    assert answer.status_code == 200
    assert elapsed < 30
    # Without --forwarded-allow-ips nobody's X-Forwarded-For counts, not even a local process's:
    # rotating it neither escapes the throttle nor locks another address out.
    with from_address("127.0.0.4") as rotator:
        codes = Counter(
            rotator.get(
                roles.url + "/api/runs",
                headers={**bearer(f"r{i}"), "X-Forwarded-For": f"10.9.{i}.1"},
            ).status_code
            for i in range(30)
        )
        assert codes[401] == 10 and codes[429] == 20, codes
    spoofed = {"X-Forwarded-For": "127.0.0.4"}
    assert (
        httpx.get(roles.url + "/api/runs", headers={**bearer(READ), **spoofed}).status_code == 200
    )


def test_behind_a_named_proxy_the_client_is_the_one_it_names(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    file.write_text(TOKENS)
    file.chmod(0o600)
    proc = start_server(
        tmp_path, "--token-file", str(file), env={"LEGATO_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    )
    try:
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        for i in range(10):
            guess = httpx.get(proc.url + "/api/runs", headers={**bearer(f"g{i}"), **proxied})
            assert guess.status_code == 401
        late = httpx.get(proc.url + "/api/runs", headers={**bearer(READ), **proxied})
        assert late.status_code == 429
        assert httpx.get(proc.url + "/api/runs", headers=bearer(READ)).status_code == 200
        # IPv6 clients are throttled per /64: a new address of it for each guess does not help.
        for i in range(10):
            v6 = {"X-Forwarded-For": f"2001:db8:0:7::{i + 1:x}", **bearer(f"h{i}")}
            assert httpx.get(proc.url + "/api/runs", headers=v6).status_code == 401
        same = {"X-Forwarded-For": "2001:db8:0:7:abcd::1", **bearer(READ)}
        assert httpx.get(proc.url + "/api/runs", headers=same).status_code == 429
        other = {"X-Forwarded-For": "2001:db8:0:8::1", **bearer(READ)}
        assert httpx.get(proc.url + "/api/runs", headers=other).status_code == 200
        # A proxy not named is not believed.
        with from_address("127.0.0.6") as stranger:
            answer = stranger.get(proc.url + "/api/runs", headers={**bearer(READ), **proxied})
            assert answer.status_code == 200
    finally:
        proc.stop()


def test_the_login_form_is_throttled_too(roles: ServerProcess) -> None:
    with from_address("127.0.0.3") as guesser:
        codes = [
            guesser.post(roles.url + "/login", data={"token": f"nope-{i}"}).status_code
            for i in range(11)
        ]
        assert codes == [401] * 10 + [429]
        blocked = guesser.post(roles.url + "/login", data={"token": ADMIN})
        assert blocked.status_code == 429 and "set-cookie" not in blocked.headers
    assert login(roles.url, ADMIN)  # another client signs in


def test_each_token_may_do_what_its_role_allows(roles: ServerProcess) -> None:
    assert "can be read by other users" in roles.output()
    admin = httpx.Client(base_url=roles.url, headers=bearer(ADMIN))
    ci = httpx.Client(base_url=roles.url, headers=bearer(OPERATE))
    dash = httpx.Client(base_url=roles.url, headers=bearer(READ))
    with admin, ci, dash:
        assert admin.post("/api/workflows", json=WORKFLOW).status_code in (200, 201)
        assert dash.get("/api/workflows").status_code == 200
        refused = dash.post("/api/workflows/audited/runs", json={"input": {}})
        assert refused.status_code == 403
        assert refused.json()["role_needed"] == "operate"
        assert "'operate' role" in refused.json()["message"]
        started = ci.post("/api/workflows/audited/runs", json={"input": {}})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        assert ci.post(f"/api/runs/{run_id}/cancel").status_code == 200
        service = {"name": "s", "base_url": "http://127.0.0.1:9"}
        assert ci.post("/api/services", json=service).json()["role_needed"] == "admin"
        assert ci.post("/api/workflows", json=WORKFLOW).status_code == 403
        assert ci.get("/api/audit").status_code == 403
        assert dash.post("/api/schedules/audited/pause").json()["role_needed"] == "operate"
        assert admin.get("/api/audit").status_code == 200


def test_every_change_is_audited_with_its_token_and_never_its_body(
    roles: ServerProcess,
) -> None:
    service = {"name": "paid", "base_url": "http://127.0.0.1:9", "token": "body-secret-xyz"}
    with httpx.Client(base_url=roles.url, headers=bearer(ADMIN)) as admin:
        assert admin.post("/api/services", json=service).status_code == 201
        assert admin.post("/api/workflows", json=WORKFLOW).status_code in (200, 201)
    with httpx.Client(base_url=roles.url, headers=bearer(OPERATE)) as ci:
        run_id = ci.post("/api/workflows/audited/runs", json={"input": {}}).json()["id"]
        assert ci.post(f"/api/runs/{run_id}/cancel").status_code == 200
        assert ci.delete("/api/services/paid").status_code == 403
    # A change through the UI carries the session's token name.
    with httpx.Client(base_url=roles.url, cookies=login(roles.url, OPERATE)) as ui:
        ui_run = ui.post(
            "/api/workflows/audited/runs", json={"input": {}}, headers={"X-Legato-UI": "1"}
        )
        assert ui_run.status_code == 202
        assert ui.post("/logout").status_code == 303

    with Client(roles.url, ADMIN) as client:
        page = client.audit(limit=7)
        entries = page["entries"]
        assert [(e["token"], e["method"], e["path"], e["status"]) for e in entries] == [
            ("ci", "POST", "/logout", 303),
            ("ci", "POST", "/api/workflows/audited/runs", 202),
            ("ci", "POST", "/login", 303),
            ("ci", "DELETE", "/api/services/paid", 403),
            ("ci", "POST", f"/api/runs/{run_id}/cancel", 200),
            ("ci", "POST", "/api/workflows/audited/runs", 202),
            ("ops", "POST", "/api/workflows", entries[6]["status"]),
        ]
        assert entries[1]["target"] == ui_run.json()["id"]
        assert entries[5]["target"] == run_id and entries[4]["target"] == run_id
        assert entries[6]["target"] == "audited" and entries[0]["client"] == "127.0.0.1"
        assert "body-secret-xyz" not in str(client.audit(limit=1000))
        # Filters and pages.
        mine = client.audit(token="ops", limit=1)
        assert [e["token"] for e in mine["entries"]] == ["ops"] and mine["next_cursor"]
        rest = client.audit(token="ops", cursor=mine["next_cursor"], limit=1000)
        assert all(e["token"] == "ops" for e in rest["entries"])
        assert min(e["id"] for e in mine["entries"]) > max(e["id"] for e in rest["entries"])
        assert client.audit(since="2999-01-01T00:00:00Z")["entries"] == []
        assert len(client.audit(since="1h", limit=1000)["entries"]) >= 7
        with pytest.raises(ApiError) as bad:
            client.audit(since="yesterday")
        assert bad.value.status == 400

    cli = subprocess.run(
        [sys.executable, "-m", "legato.cli", "audit", "--url", roles.url, "--token-name", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LEGATO_API_TOKEN": ADMIN},
    )
    assert cli.returncode == 0, cli.stderr
    assert f"POST   /api/runs/{run_id}/cancel" in cli.stdout and "ops" not in cli.stdout


def test_nobody_without_a_token_can_flood_the_audit_log(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    file.write_text(TOKENS)
    file.chmod(0o600)
    proc = start_server(tmp_path, "--token-file", str(file))
    long = "/e/" + "A" * 20_000
    try:
        # A change sent with no credentials counts as a wrong guess: 10, then 429s (not audited).
        with from_address("127.0.0.7") as anonymous:
            codes = Counter(anonymous.post(f"{proc.url}{long}{i}").status_code for i in range(50))
        assert codes == {401: 10, 429: 40}, codes
        # From many addresses, at most 60 such requests a minute are audited, in all.
        for j in range(8):
            with from_address(f"127.0.1.{j + 1}") as anonymous:
                for i in range(10):
                    assert anonymous.post(f"{proc.url}{long}{i}").status_code == 401
        with httpx.Client(base_url=proc.url, headers=bearer(OPERATE)) as ci:
            assert ci.post(long).status_code >= 400  # audited, whatever the budget: a token's
        with Client(proc.url, ADMIN) as client:
            entries = client.audit(limit=1000)["entries"]
        anonymous_rows = [e for e in entries if e["token"] is None]
        assert len(anonymous_rows) == 60, len(anonymous_rows)
        assert entries[0]["token"] == "ci" and entries[0]["status"] >= 400
        assert entries[0]["path"] == long[:512] + f"...({len(long) - 512} more)"
        assert all(len(e["path"]) < 600 and len(e["target"] or "") < 600 for e in entries)
        assert "not auditing more than 60 requests a minute" in proc.output()
    finally:
        proc.stop()
    size = sum(f.stat().st_size for f in tmp_path.glob("server.db*"))
    assert size < 5_000_000, size


def test_the_audit_log_is_kept_for_its_retention(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    file.write_text(TOKENS)
    file.chmod(0o600)
    proc = start_server(tmp_path, "--token-file", str(file), env={"LEGATO_AUDIT_RETENTION": "2s"})
    try:
        with httpx.Client(base_url=proc.url, headers=bearer(ADMIN)) as admin:
            assert admin.post("/api/workflows", json=WORKFLOW).status_code in (200, 201)
            assert len(admin.get("/api/audit").json()["entries"]) == 1
            deadline = time.monotonic() + 10
            while admin.get("/api/audit").json()["entries"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert admin.get("/api/audit").json()["entries"] == []
    finally:
        proc.stop()
    bad = subprocess.run(
        [sys.executable, "-m", "legato.cli", "serve", "--audit-retention", "0s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--audit-retention must be longer than 0s" in bad.stderr


def test_a_short_token_is_refused_on_a_public_address(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        db = f"sqlite:///{tmp_path / 'x.db'}"
        command = [sys.executable, "-m", "legato.cli", "serve", "--port", str(free_port())]
        return subprocess.run(
            [*command, "--db", db, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )

    done = serve("--host", "0.0.0.0", "--token", "abc")
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 with a short token: 'default' has 3 characters" in (
        done.stderr
    )
    file = tmp_path / "tokens.toml"
    file.write_text('[tokens]\nweak = { token = "0123456789", role = "read" }\n')
    file.chmod(0o600)
    done = serve("--host", "0.0.0.0", "--token-file", str(file))
    assert done.returncode == 2 and "'weak' has 10 characters" in done.stderr
    file.write_text('[tokens]\nweak = { token = "0123456789abcdef", role = "boss" }\n')
    done = serve("--token-file", str(file))
    assert done.returncode == 2 and "tokens.weak.role: must be one of read, operate" in done.stderr


def test_a_store_that_fails_answers_503_and_logs_once(tmp_path: Path) -> None:
    token = "store-token-0123456789"
    server = start_server(tmp_path, env={"LEGATO_API_TOKEN": token})
    try:
        cookie = login(server.url, token)
        path = server.db.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:  # the tables go away under the running server
            db.execute("DROP TABLE sessions")
            db.execute("DROP TABLE audit")
        for _ in range(20):
            answer = httpx.get(server.url + "/api/runs", cookies=cookie)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert httpx.post(server.url + "/login", data={"token": token}).status_code == 503
        # A change is still answered when its audit row cannot be written.
        made = httpx.post(server.url + "/api/workflows", json=WORKFLOW, headers=bearer(token))
        assert made.status_code == 201
        time.sleep(0.2)
        log = server.output()
        assert log.count("cannot read sessions") == 1, log
        assert log.count("cannot write the audit log") == 1
        assert "Traceback" not in log
    finally:
        server.stop()
