"""The bad-input tables' one assertion: ``call()`` raises ``exc`` and its message contains every word."""
import pytest


def assert_named_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
