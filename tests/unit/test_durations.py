"""parse_duration / format_duration: the spellings users write and the ones refused."""

from __future__ import annotations

import math

import pytest

from legato.model.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 30s ", 30.0),
        ("1h 30m", 5400.0),
    ],
)
def test_parse_duration_text(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_returns_float() -> None:
    assert isinstance(parse_duration("30s"), float)
    assert isinstance(parse_duration(3), float)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (5, 5.0), (2.5, 2.5), (86400, 86400.0)])
def test_parse_duration_numbers_are_seconds(value: float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "   ", "abc", "5", "10x", "s", "m5", "5m abc", "-5s", "5 minutes", "1.s", None, [], {}],
)
def test_parse_duration_refuses_bad_text(value: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(value)


def test_parse_duration_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(-0.5)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_refuses_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(value)


def test_parse_duration_error_message_gives_examples() -> None:
    with pytest.raises(ValueError, match=r"500ms, 30s, 5m, 1h"):
        parse_duration("soon")


def test_parse_duration_refuses_nan() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(math.nan)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (30, "30s"),
        (90, "90s"),
        (300, "5m"),
        (3600, "1h"),
        (86400, "1d"),
        (5400, "90m"),
        (1.25, "1250ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.0, 0.25, 1.0, 45.0, 120.0, 5400.0, 7200.0, 172800.0])
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", ["99999999999d", 1e308, "3661d", 10 * 366 * 86400 + 1])
def test_durations_past_ten_years_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="at most 3660d"):
        parse_duration(value)
