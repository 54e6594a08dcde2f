"""The ODE integrators scoresde hands its probability-flow ODE to, listed once.

* torchdiffeq (``odeint(method=...)``): its explicit Runge-Kutta methods. The fixed-step ones take
  one step per interval of the times they are given (order, model calls per step from the Butcher
  tableau; torchdiffeq's rk4 is the 3/8 rule); the adaptive ones choose their own steps under
  ``rtol``/``atol`` with an embedded error estimate and report the order of the propagated solution
  (Hairer, Norsett & Wanner, "Solving ODEs I", II.4-5). torchdiffeq publishes no list of its methods,
  so they are written out here and ``tests/test_integrators.py`` checks each entry against
  torchdiffeq's own behaviour (fixed: exactly ``calls`` evaluations per interval; adaptive: the count
  follows the tolerance).
* scipy (``solve_ivp(method=...)``): every public :class:`scipy.integrate.OdeSolver` subclass, read
  from scipy itself; all choose their own steps. The explicit Runge-Kutta ones declare their order
  (``RK23.order`` ...); the implicit and switching ones (Radau, BDF, LSODA) have none to declare here.
"""
from __future__ import annotations

__all__ = ["TORCHDIFFEQ_FIXED", "TORCHDIFFEQ_ADAPTIVE", "TORCHDIFFEQ_METHODS", "scipy_methods", "is_adaptive"]

#: fixed-step torchdiffeq method -> (order, model calls per step)
TORCHDIFFEQ_FIXED: dict[str, tuple[int, int]] = {
    "euler": (1, 1), "midpoint": (2, 2), "heun2": (2, 2), "heun3": (3, 3), "rk4": (4, 4),
}
#: adaptive torchdiffeq method -> order of the propagated solution
TORCHDIFFEQ_ADAPTIVE: dict[str, int] = {
    "dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2,
}
TORCHDIFFEQ_METHODS: tuple[str, ...] = (*TORCHDIFFEQ_FIXED, *TORCHDIFFEQ_ADAPTIVE)


def scipy_methods() -> dict[str, int | None]:
    """``solve_ivp``'s methods (the public ``OdeSolver`` subclasses of scipy.integrate) -> their order
    (None where the method does not declare one)."""
    import scipy.integrate as si

    out = {}
    for name in dir(si):
        cls = getattr(si, name)
        if isinstance(cls, type) and issubclass(cls, si.OdeSolver) and cls is not si.OdeSolver:
            out[name] = getattr(cls, "order", None)
    # explicit Runge-Kutta methods by order first, then the others by name
    return dict(sorted(out.items(), key=lambda kv: (kv[1] is None, kv[1] or 0, kv[0])))


def is_adaptive(method: str) -> bool:
    """Whether torchdiffeq's ``method`` chooses its own steps (ValueError for a method not listed here)."""
    if method in TORCHDIFFEQ_ADAPTIVE:
        return True
    if method in TORCHDIFFEQ_FIXED:
        return False
    raise ValueError(f"method: unknown torchdiffeq method {method!r}; known methods: {', '.join(TORCHDIFFEQ_METHODS)}")
