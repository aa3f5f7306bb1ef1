"""``Runtime(...)`` refuses invalid arguments with ``ConfigError`` before it opens anything."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runledger import Registry, Runtime
from runledger.errors import ConfigError

# Never reached: every check runs before the runtime builds its pool.
_DSN = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("concurrency", 0),
        ("concurrency", -3),
        ("queues", ()),
        ("queues", " , "),
        ("lease_seconds", 0),
        ("poll_interval", -1.0),
        ("reap_interval", math.inf),
        ("schedule_interval", math.nan),
        ("shutdown_timeout", 0.0),
    ],
)
def test_an_invalid_argument_raises_config_error_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        Runtime(_DSN, Registry(), **{name: value})

    assert caught.value.name == name
    assert caught.value.value is value or caught.value.value == value
    assert caught.value.expected
    assert name in str(caught.value)
    # Code written against the old bare ValueError keeps working.
    assert isinstance(caught.value, ValueError)
