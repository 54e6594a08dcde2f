"""Method specs: which sampler a study runs, with which options, under which label.

A *method spec* is a registered sampler name, optionally with options: ``"ddim"``,
``"ddim:eta=0.5"`` or ``("ddim", {"eta": 0.5})``. :func:`parse_method` turns any of them into a
:class:`Method` with a label for tables and legends; :func:`check_steps` and :func:`check_grids`
check the other two lists a study iterates over. Every check runs before any work starts.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import grids as _grids
from ..samplers import Sampler, available, get_sampler

__all__ = ["Method", "parse_method", "parse_methods", "check_steps", "check_grids"]


@dataclass(frozen=True)
class Method:
    """A registered sampler with its options, and the label used in tables and legends."""

    name: str
    options: tuple = ()
    label: str = ""

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def cls(self) -> type[Sampler]:
        return get_sampler(self.name)

    def instance(self) -> Sampler:
        return self.cls(**self.opts)


def _literal(text: str) -> bool | int | float | str:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_method(spec: str | tuple | Method) -> Method:
    """``"name"``, ``"name:key=value,key=value"``, ``(name, options)`` or a :class:`Method`.

    Unknown names raise a ValueError listing the registered samplers; unknown options raise one
    listing the sampler's options.
    """
    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        opts = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"method: option {item!r} in {spec!r} is not of the form key=value")
            opts[key.strip()] = _literal(value)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, opts = spec[0], dict(spec[1])
    else:
        raise ValueError(f"method: expected a sampler name, 'name:key=value', or (name, options), got {spec!r}")
    name = name.strip()
    if name not in available():
        raise ValueError(f"method: unknown sampler {name!r}; known samplers: {', '.join(available())}")
    cls = get_sampler(name)
    unknown = sorted(set(opts) - set(cls.option_names()))
    if unknown:
        raise ValueError(f"method: {name!r} does not accept {', '.join(unknown)}; "
                         f"its options are: {', '.join(cls.option_names()) or '(none)'}")
    cls(**opts)  # let the sampler validate its option values now, before any work starts
    label = name + (f"({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else "")
    return Method(name, tuple(sorted(opts.items())), label)


def parse_methods(specs: Iterable | str | Method, *, allow_adaptive: bool = False) -> list[Method]:
    """Parse a non-empty list of method specs; adaptive solvers are refused unless allowed."""
    if isinstance(specs, (str, Method)):
        specs = [specs]
    methods = [parse_method(s) for s in specs]
    if not methods:
        raise ValueError(f"methods: expected at least one sampler; known samplers: {', '.join(available())}")
    if not allow_adaptive:
        for m in methods:
            if m.instance().adaptive:  # an instance decides from its options (ode: solver='dopri5')
                raise ValueError(f"methods: {m.name!r} is adaptive (it chooses its own steps), so a step count "
                                 "does not apply; use a fixed-step sampler here")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods: duplicate entries {labels}")
    return methods


def check_steps(steps: Iterable[int] | int, name: str = "steps") -> list[int]:
    """A non-empty, strictly increasing list of positive integers."""
    if isinstance(steps, int):
        steps = [steps]
    try:
        values = list(steps)
    except TypeError:
        raise ValueError(f"{name}: expected a list of positive integers, got {steps!r}") from None
    if not values:
        raise ValueError(f"{name}: expected a non-empty, strictly increasing list of positive integers, got []")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v or v < 1:
            raise ValueError(f"{name}: expected positive integers, got {v!r} in {values}")
    values = [int(v) for v in values]
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name}: must be strictly increasing, got {values}")
    return values


def check_grids(names: Iterable[str] | str) -> list[str]:
    """Known grid names (``scoresde.grids.available()``), non-empty, no duplicates."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError(f"grids: expected at least one grid; known grids: {', '.join(_grids.available())}")
    for g in names:
        if g not in _grids.GRIDS:
            raise ValueError(f"grid: unknown name {g!r}; known grids: {', '.join(_grids.available())}")
    if len(set(names)) != len(names):
        raise ValueError(f"grids: duplicate entries {names}")
    return names
