"""Temperature schedules: small functions of progress, and a stateful scheduler around them.

A schedule is ``fn(step, total, tau_max, tau_min, **options) -> tau`` registered in
``nas.registry.SCHEDULES``; ``step`` counts epochs or iterations (the scheduler's ``per``) from 0,
and ``total`` is how many there are. GDAS anneals linearly from 10 to 0.1 over the epochs.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InputError
from .registry import SCHEDULES

TAU_FLOOR = 1e-4  # tau = 0 divides by zero in the softmax; no schedule goes below this


def _progress(step: int, total: int) -> float:
    return min(step / (total - 1), 1.0) if total > 1 else 1.0


def linear(step: int, total: int, tau_max: float, tau_min: float) -> float:
    """GDAS: tau_max - (tau_max - tau_min) * step / (total - 1)."""
    return tau_max - (tau_max - tau_min) * _progress(step, total)


def exponential(step: int, total: int, tau_max: float, tau_min: float) -> float:
    """Geometric decay from tau_max at the first step to tau_min at the last."""
    return tau_max * (tau_min / tau_max) ** _progress(step, total)


def cosine(step: int, total: int, tau_max: float, tau_min: float) -> float:
    """Half a cosine from tau_max at the first step to tau_min at the last."""
    return tau_min + 0.5 * (tau_max - tau_min) * (1 + math.cos(math.pi * _progress(step, total)))


def step_decay(step: int, total: int, tau_max: float, tau_min: float, every: int = 1,
               gamma: float = 0.5) -> float:
    """Multiply by gamma every ``every`` steps, never below tau_min."""
    if every < 1 or not 0 < gamma <= 1:
        raise ValueError(f"the step schedule needs every >= 1 and 0 < gamma <= 1, got every={every}, "
                         f"gamma={gamma}")
    return max(tau_max * gamma ** (step // every), tau_min)


def constant(step: int, total: int, tau_max: float, tau_min: float) -> float:
    """Always tau_max."""
    return tau_max


# The built-in schedules, registered by name (plain functions, so that mutation testing reaches
# them; a plugin may use the decorator form, @SCHEDULES.register("name")).
for _name, _fn in {"linear": linear, "exponential": exponential, "cosine": cosine,
                   "step": step_decay, "constant": constant}.items():
    SCHEDULES.register(_name, _fn)


class TemperatureScheduler:
    """Holds the position in a schedule; ``step()`` once per epoch or per iteration (``per``)."""

    def __init__(self, schedule: str = "linear", total: int = 1, tau_max: float = 10.0,
                 tau_min: float = 0.1, per: str = "epoch", **options: Any) -> None:
        if per not in ("epoch", "iteration"):
            raise InputError(f"tau.per must be 'epoch' or 'iteration', got {per!r}")
        if not (tau_min > 0 and tau_max >= tau_min and math.isfinite(tau_max)):
            raise InputError(f"temperature needs tau_max >= tau_min > 0, got tau_max={tau_max}, "
                             f"tau_min={tau_min}")
        if total < 1:
            raise InputError(f"a temperature schedule needs total >= 1 steps, got {total}")
        self.fn = SCHEDULES.get(schedule)
        self.schedule, self.total, self.per = schedule, int(total), per
        self.tau_max, self.tau_min, self.options = float(tau_max), float(tau_min), dict(options)
        self.last_step = 0
        # Every step's value is checked now, so a bad schedule fails before the run starts.
        steps = range(self.total + 1) if self.total <= 100_000 else (0, self.total // 2, self.total)
        for step in steps:
            try:
                value = self.fn(step, self.total, self.tau_max, self.tau_min, **self.options)
            except Exception as exc:  # a plugin's schedule, or options it does not take
                raise InputError(f"temperature schedule '{schedule}' failed at step {step}: "
                                 f"{type(exc).__name__}: {exc}") from None
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value):
                raise InputError(f"temperature schedule '{schedule}' returned {value!r} at step "
                                 f"{step}; it must return a finite number")

    @property
    def tau(self) -> float:
        """The temperature at the current step."""
        return self.at(self.last_step)

    def at(self, step: int) -> float:
        """The temperature at ``step`` (never below ``TAU_FLOOR``)."""
        value = float(self.fn(step, self.total, self.tau_max, self.tau_min, **self.options))
        if not math.isfinite(value):
            raise ValueError(f"temperature schedule '{self.schedule}' returned {value} at step "
                             f"{step}")
        return max(value, TAU_FLOOR)

    def step(self) -> None:
        """Advance by one epoch or iteration."""
        self.last_step += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue at exactly the same value."""
        return {"schedule": self.schedule, "total": self.total, "per": self.per,
                "tau_max": self.tau_max, "tau_min": self.tau_min, "options": dict(self.options),
                "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()``."""
        self.__init__(state["schedule"], state["total"], state["tau_max"], state["tau_min"],
                      state["per"], **state["options"])
        self.last_step = int(state["last_step"])

    def __repr__(self) -> str:
        return (f"TemperatureScheduler({self.schedule!r}, total={self.total}, per={self.per!r}, "
                f"tau={self.tau:.4g}, step={self.last_step})")
