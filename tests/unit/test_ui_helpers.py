"""The UI's pure helpers: what a node and a branch label show, JSON safe inside a script element,
where a login may send a browser, and which service a step's calls count for."""

from __future__ import annotations

import orjson

from legato.model.build import build_workflow
from legato.server.access import ADMIN, Token
from legato.ui import auth
from legato.ui.stats import ServiceCalls, step_service
from legato.ui.view import clip, clip_middle, graph_view, script_json, took

WF = build_workflow(
    {
        "name": "v",
        "steps": {
            "reserve": {"http": {"service": "stock", "path": "/r"}},
            "pick": {
                "depends_on": "reserve",
                "branch": {
                    "cases": [
                        {"when": "{{ steps.reserve.output.status == 200 }}", "then": ["each"]}
                    ],
                    "otherwise": ["nope"],
                },
            },
            "each": {"map": {"over": "{{ input.items }}", "step": {"http": {"service": "mail"}}}},
            "nope": {"fail": "no"},
        },
    }
)


def test_nodes_carry_kind_and_target_and_branch_labels_lose_their_braces() -> None:
    view = graph_view(WF)
    nodes = {n.box.id: n for n in view.nodes}
    assert (nodes["reserve"].kind, nodes["reserve"].target) == ("http", "stock")
    assert nodes["pick"].kind == "branch" and nodes["each"].kind == "map"
    labels = {(e.source, e.target): e.label for e in view.layout.edges}
    assert labels[("pick", "each")] == "steps.reserve.output.status == 200"
    assert labels[("pick", "nope")] == "otherwise"
    assert labels[("reserve", "pick")] is None


def test_durations_read_like_a_person_would_say_them() -> None:
    assert took(None, 1.0) == "" and took(1.0, None) == ""
    assert took(0.0, 0.85) == "850 ms" and took(0.0, 12.34) == "12.3 s"
    assert took(0.0, 245.0) == "4 min 5 s" and took(0.0, 7380.0) == "2 h 3 min"


def test_clip_and_script_json() -> None:
    assert clip("short", 10) == "short"
    assert clip("a_very_long_step_name", 8) == "a_very_\u2026"
    label = clip_middle("steps.charge.output.status == 200", 21)
    assert len(label) == 21 and label.startswith("steps.ch") and label.endswith("tus == 200")
    assert clip_middle("otherwise", 21) == "otherwise"
    text = script_json({"x": "</script><!-- &"})
    assert "<" not in text and orjson.loads(text) == {"x": "</script><!-- &"}


def test_a_session_is_kept_as_a_hash_bound_to_its_token_and_next_stays_on_this_server() -> None:
    key = auth.session_key("the-session-id")
    assert len(key) == 64 and "the-session-id" not in key
    one, other = Token("a", "t0ken-t0ken-t0ken", ADMIN), Token("a", "changed-changed!", ADMIN)
    assert auth.fingerprint(one, "sid") != auth.fingerprint(other, "sid")
    assert auth.fingerprint(one, "sid") != auth.fingerprint(one, "sid2")
    assert auth.safe_next("/runs?status=failed") == "/runs?status=failed"
    bad_ones = (None, "", "https://evil.example", "//evil.example", "/\\evil.example", "/\t/evil")
    for bad in bad_ones:
        assert auth.safe_next(bad) == "/"
    assert auth.is_page("/", "GET") and auth.is_page("/runs", "GET")
    assert not auth.is_page("/runs/abc/events", "GET") and not auth.is_page("/runs", "POST")
    assert not auth.is_page("/api/runs", "GET")
    assert auth.cookie_name({"server": ("127.0.0.1", 8080)}) == "legato_session_8080"
    assert auth.cookie_name({"server": None}) == "legato_session"


def test_calls_count_for_the_service_a_step_or_its_map_children_call() -> None:
    assert step_service(WF, "reserve") == "stock"
    assert step_service(WF, "each[3]") == "mail"
    assert step_service(WF, "pick") is None and step_service(WF, "gone") is None
    assert ServiceCalls(4, 1).error_rate == 0.25 and ServiceCalls().error_rate is None
