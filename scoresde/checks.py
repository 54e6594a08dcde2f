"""The one boundary: argument checks with one error policy, and failures kept as data.

Policy (every function here follows it, and the public entry points call them once, where a value enters:
:func:`~scoresde.sample`, :func:`~scoresde.likelihood.log_likelihood`, the bounds, the trainer and its
config, the diffusers scheduler and the command line):

* a value of the wrong **type** (a string for a number, ``2.5`` or ``True`` for a count, a NumPy
  generator) is a ``TypeError``; a value of the right type outside what is allowed (a negative count,
  an unknown name, a NaN) is a ``ValueError``;
* the message names the argument, the value given and what is allowed.

Below the boundary the SDE evaluators, the parameterisation conversions, the networks and the sampler
steps are pure tensor functions: they never read a device tensor on the host (``bool(t)``, ``.item()``,
``float(t)``, ``.tolist()``, ``.cpu()``), which on a GPU waits for every queued kernel. A non-finite
network output or state is therefore not checked where it is produced but recorded on the device by a
:class:`FiniteWatch` (which call and which step first went bad) and read once, after the run (torchsde's
``check_contract`` checks once; diffrax keeps failures as data in its ``RESULTS``).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["check_finite_number", "check_count", "check_bool", "check_generator", "check_choice", "check_instance",
           "check_time", "check_shape", "NonFiniteModelOutput", "FiniteWatch", "CHECK_FINITE",
           "HostSyncCounter"]


# ----- scalars ------------------------------------------------------------------------------------
def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_" or (
        isinstance(value, Tensor) and value.dtype == torch.bool)


def _is_real_scalar(value) -> bool:
    """A real number that is not a boolean: int, float, a NumPy real scalar, or a one-element real tensor."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not _is_bool(value)


def check_finite_number(name: str, value, *, positive: bool = False, allowed: str | None = None) -> float:
    """A finite real number (above 0 with ``positive``), returned as a float.

    Not a real number (a string, a boolean, None, a list): TypeError; NaN, infinite or (with
    ``positive``) not above 0: ValueError.
    """
    what = allowed or ("a finite positive number" if positive else "a finite number")
    if not _is_real_scalar(value):
        raise TypeError(f"{name}: expected {what}, got {value!r} of type {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def check_count(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A count (samples, steps, ...) in ``[minimum, maximum]``, returned as an int.

    Only integers are counts: ``2.5``, ``2.0`` or ``True`` is a TypeError rather than a silently
    truncated 2; an integer outside the range is a ValueError.
    """
    what = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point() and not value.is_complex())
    if not integral or _is_bool(value):
        raise TypeError(f"{name}: expected {what}, got {value!r} of type {type(value).__name__}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        raise ValueError(f"{name}: expected {what}, got {v}")
    return v


#: the largest seed taken: torch's generators hold 64 bits, and some runs seed ``seed + k`` for a few k
SEED_MAX = 2**63 - 1


def check_seed(name: str, value) -> int:
    """A random seed: an integer in ``[0, SEED_MAX]`` (beyond it torch says only "Overflow when unpacking")."""
    return check_count(name, value, minimum=0, maximum=SEED_MAX)


def check_bool(name: str, value) -> bool:
    """A flag is ``True`` or ``False``: the string ``'false'`` (which is truthy) or ``0`` is a TypeError."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name}: expected True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_generator(name: str, generator) -> torch.Generator | None:
    """``None`` or a ``torch.Generator``; a NumPy generator or an integer seed is a TypeError."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    seed = generator if isinstance(generator, int) and not isinstance(generator, bool) else 0
    if not 0 <= seed <= SEED_MAX:  # torch's generators take no larger seed ("Overflow when unpacking long long")
        raise TypeError(f"{name}: expected a torch.Generator or None, got the integer {seed}; make one with "
                        f"torch.Generator().manual_seed(seed) for a seed in [0, {SEED_MAX}]")
    raise TypeError(f"{name}: expected a torch.Generator or None, got {type(generator).__module__}."
                    f"{type(generator).__qualname__} {generator!r:.60}; make one with "
                    f"torch.Generator().manual_seed({seed}) (a numpy Generator or a seed cannot drive torch's draws)")


def check_choice(name: str, value, allowed, *, also: str = "") -> str:
    """One of the names ``allowed`` (a ValueError listing them otherwise; ``also`` adds to the list)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: unknown {value!r}; allowed: {', '.join(map(str, allowed))}{also}")
    return value


def check_instance(name: str, value, cls, what: str):
    """``value`` must be an instance of ``cls`` (``what`` says which, e.g. 'a scoresde.ScoreModel'): TypeError."""
    if not isinstance(value, cls):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    return value


def check_time(name: str, value) -> float | None:
    """A time of the SDE (a real number or a 0-d floating tensor), or None; returned as a float."""
    if value is None:
        return None
    if isinstance(value, Tensor) and value.ndim == 0 and value.is_floating_point():
        value = float(value)
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number (a time of the SDE) or None, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite time, got {value!r}")
    return float(value)


def check_shape(name: str, shape) -> tuple[int, ...]:
    """A batch shape ``(batch, *event_shape)``: a tuple of at least two positive ints."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name}: expected a tuple of positive ints (batch, *event_shape), e.g. (16, 2), got {shape!r}")
    if any(_is_bool(n) or not isinstance(n, numbers.Integral) for n in shape):
        raise TypeError(f"{name}: expected a tuple of positive ints (batch, *event_shape), got {shape!r}")
    if len(shape) < 2:
        raise ValueError(f"{name}: expected a tuple of at least two positive ints (batch, *event_shape), got {shape!r}")
    if min(shape) < 1:
        what = "an empty batch (batch size 0)" if shape[0] == 0 else "a size below 1"
        raise ValueError(f"{name}: expected positive sizes, got {tuple(shape)}, {what}")
    return tuple(int(n) for n in shape)


# ----- failures as data ---------------------------------------------------------------------------
class NonFiniteModelOutput(FloatingPointError):
    """The network itself returned NaN or inf (as opposed to a sampler's state becoming non-finite)."""


#: When a run reads its non-finite record: after every call and step (debugging; a host sync each),
#: once at the end (raising the same error), once at the end without raising (the record in
#: ``SampleResult.stats['non_finite']``), or never.
CHECK_FINITE = ("step", "end", "record", "off")



def describe_time(t) -> str:
    """A time (a number, a 0-d or a per-sample tensor) for a message; reads it on the host."""
    if not isinstance(t, Tensor):
        return f"{float(t):.6g}"
    t = t.detach()
    lo, hi = float(t.min()), float(t.max())
    return f"{lo:.6g}" if lo == hi else f"{lo:.6g} .. {hi:.6g} (per sample)"


class FiniteWatch:
    """Where a run's model outputs and states first turned non-finite, kept on the device.

    :meth:`output` is told every model output (``ScoreModel.predict`` does it, see ``ScoreModel.watching``)
    and :meth:`state` the state after every grid step ``i`` (``i = steps``: after a final denoising step).
    In mode ``'step'`` each reads its tensor and raises at once (a host sync per call); in ``'end'`` and
    ``'record'`` each folds ``isfinite(.).all()`` into a 0-d device tensor holding the first bad call (or
    step) number, counted from 1 with 0 for "none yet", with ``torch.where``, which queues work and never waits; ``'off'`` does nothing.
    :meth:`read` reads both numbers in one transfer after the run. The host keeps each call's time as it
    was given (a number, or a tensor it does not read) and how many calls each step had made, so that a
    bad call is named by its step and its time afterwards.

    Args:
        mode: one of :data:`CHECK_FINITE`.
        label: what the messages start with (the sampler's name).
        times: the run's grid as floats (for the messages), or None.
    """

    def __init__(self, mode: str = "end", label: str = "", times: list[float] | None = None):
        self.mode = check_choice("check_finite", mode, CHECK_FINITE)
        self.label = label
        self.times = times
        self.calls = 0
        self._fn_name = "fn"
        self._times: list = []           # the time of each call, as given
        self._calls_after_step: list[int] = []
        self._bad_call: Tensor | None = None
        self._bad_step: Tensor | None = None

    @property
    def recording(self) -> bool:
        return self.mode in ("end", "record")

    @staticmethod
    def _fold(record: Tensor | None, values: Tensor, number: int) -> Tensor:
        """``record`` (0: no bad one yet) with ``number`` (>= 1) written in if it is the first bad one."""
        ok = torch.isfinite(values).all()
        if record is None:
            return torch.where(ok, 0, number)
        return torch.where(ok | (record > 0), record, number)

    def output(self, out: Tensor, t, fn_name: str) -> None:
        """A model output at time ``t`` (the ``calls``-th call, counted here)."""
        self.calls += 1
        if self.mode == "step":
            if not bool(torch.isfinite(out).all()):
                raise NonFiniteModelOutput(f"the model {fn_name} returned NaN/inf at t = {describe_time(t)}")
        elif self.recording:
            self._times.append(t.detach() if isinstance(t, Tensor) else t)
            self._fn_name = fn_name
            self._bad_call = self._fold(self._bad_call, out.detach(), self.calls)

    def state(self, i: int, x: Tensor) -> None:
        """The state after grid step ``i``."""
        self._calls_after_step.append(self.calls)
        if self.mode == "step":
            if not bool(torch.isfinite(x).all()):
                raise self.error({"kind": "state", "step": i})
        elif self.recording:
            self._bad_step = self._fold(self._bad_step, x.detach(), i + 1)

    def read(self) -> dict | None:
        """The first failure, or None (one host transfer, after the run).

        ``{'kind': 'model' or 'state', 'step': the grid step, 'call': the model call (1-based) or None,
        't': the time of that call (a string) or None}``. A bad model output is blamed when it came no
        later than the first bad state; a bad state after finite outputs is an unstable step.
        """
        if not self.recording or (self._bad_call is None and self._bad_step is None):
            return None
        recs = (self._bad_call, self._bad_step)
        device = next(r.device for r in recs if r is not None)
        call, step = torch.stack([torch.zeros((), dtype=torch.int64, device=device) if r is None
                                  else r.to(device=device, dtype=torch.int64) for r in recs]).cpu().tolist()
        step -= 1  # stored from 1
        if call > 0:  # the step a call belongs to: the first step that ended after it
            call_step = next((i for i, n in enumerate(self._calls_after_step) if n >= call),
                             len(self._calls_after_step))
            if step < 0 or call_step <= step:
                return {"kind": "model", "step": call_step, "call": call, "t": describe_time(self._times[call - 1])}
        if step >= 0:
            return {"kind": "state", "step": step, "call": None, "t": None}
        return None

    def error(self, failure: dict) -> FloatingPointError:
        """The exception for a failure :meth:`read` returned, with the message a per-call check would give."""
        i, times, label = failure["step"], self.times or [], f"{self.label}: " if self.label else ""
        last = i + 1 >= len(times)  # past the grid: a final denoising step
        if failure["kind"] == "model":
            where = ("" if not times else "in the final denoising step: " if last
                     else f"during step {i}{_step_span(times, i)}: ")
            return NonFiniteModelOutput(f"{label}{where}the model {self._fn_name} returned NaN/inf at "
                                        f"t = {failure['t']}")
        if last and times:
            return FloatingPointError(f"{label}the final denoising step at t = {times[-1]:.6g} gave non-finite values "
                                      "from finite model outputs (alpha(t_min) = 0?)")
        return FloatingPointError(f"{label}the state became non-finite after step {i}{_step_span(times, i)} although "
                                  "the model's outputs were finite: an unstable step or schedule (sigma = 0, alpha = 0 "
                                  "or a huge log-SNR step there)")


def _step_span(times, i: int) -> str:
    if not times or i + 1 >= len(times):
        return ""
    return f" (t = {times[i]:.6g} -> {times[i + 1]:.6g})"


# ----- a tool to see the host syncs of a piece of code --------------------------------------------
class HostSyncCounter:
    """Count, under ``with HostSyncCounter() as c:``, what makes the host wait for a device.

    ``c.scalar_reads``: reads of one value of a non-CPU tensor (``aten._local_scalar_dense``: ``bool(t)``,
    ``.item()``, ``float(t)``, ``int(t)``); ``c.copies``: cross-device copies with a non-CPU end
    (``aten._to_copy`` to another device, ``aten.copy_`` between devices: ``.cpu()``, ``.to(device)``,
    ``.tolist()``); ``c.data_dependent``: ops whose output size depends on device values (``nonzero``).
    ``c.events`` lists ``(kind, op)`` in order. Built on ``torch.utils._python_dispatch.TorchDispatchMode``.

    With tensors on the ``meta`` device (shapes without values) nothing can be read: a scalar read then
    returns ``True``/``1``/``0.5`` and a copy to the CPU returns zeros, so that the code runs on and every
    sync of a whole run is counted (the values are meaningless; only the counts are).
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.scalar_reads = self.copies = self.data_dependent = 0
        self.events: list[tuple[str, str]] = []
        aten = torch.ops.aten

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                src = args[0] if args and isinstance(args[0], Tensor) else None
                if func is aten._local_scalar_dense.default and src is not None and src.device.type != "cpu":
                    counter._note("scalar_read", func)
                    if src.device.type == "meta":
                        return True if src.dtype == torch.bool else (0.5 if src.is_floating_point() else 1)
                elif func is aten._to_copy.default and src is not None and kwargs.get("device") is not None:
                    dst = torch.device(kwargs["device"])
                    if dst.type != src.device.type:
                        counter._note("copy", func)
                        if src.device.type == "meta":
                            return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype, device=dst)
                elif func is aten.copy_.default and src is not None and isinstance(args[1], Tensor) \
                        and args[1].device != src.device:
                    counter._note("copy", func)
                    if args[1].device.type == "meta":
                        return src
                elif func in (aten.nonzero.default,) and src is not None and src.device.type != "cpu":
                    counter._note("data_dependent", func)
                return func(*args, **kwargs)

        self._mode = _Mode()

    def _note(self, kind: str, func) -> None:
        if kind == "scalar_read":
            self.scalar_reads += 1
        elif kind == "copy":
            self.copies += 1
        else:
            self.data_dependent += 1
        self.events.append((kind, str(func)))

    @property
    def total(self) -> int:
        return self.scalar_reads + self.copies + self.data_dependent

    def __enter__(self) -> HostSyncCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
