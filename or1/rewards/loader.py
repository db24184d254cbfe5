"""Resolving the configured reward function (``reward.fn``) to a callable, at start-up.

Besides ``fn(response, sample, **kwargs)``, a reward function may carry optional hooks, set as
attributes of the function (see docs/rewards.md; ``or1.rewards.math`` and ``or1.rewards.code``
use them):

- ``fn.warmup()``: run once in every reward worker before it takes items (heavy imports, caches),
  so no item's deadline pays for a cold start;
- ``fn.deadline_s(sample, **kwargs) -> float``: the item's own deadline instead of
  ``reward.timeout_s`` (the code verifier: the sandbox's per-test limit times the test count);
- ``fn.startup_check(**kwargs)``: run once in the driver at start-up; raise with a reason to stop
  the run before anything expensive starts (the code verifier: the sandbox answers).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from typing import Any, Callable

RewardFn = Callable[[str, dict], Any]


class RewardConfigError(ValueError):
    """The configured reward function cannot be used; raised before training starts."""


def load_reward_fn(spec: str, kwargs: dict | None = None) -> RewardFn:
    """``package.module:name`` or ``/path/to/file.py:name`` → the callable, checked.

    The callable must accept ``(response: str, sample: dict, **kwargs)``; ``kwargs`` (from the
    reward term's configuration) are bound to it.
    """
    kwargs = dict(kwargs or {})
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise RewardConfigError(f"reward function {spec!r} must look like 'package.module:name' "
                                f"or '/path/to/file.py:name'")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise RewardConfigError(f"reward file {target!r} does not exist")
        module = _load_file(target)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise RewardConfigError(f"importing reward module {target!r} failed: {exc!r}") from exc
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise RewardConfigError(f"{target!r} has no callable named {name!r}")
    try:
        inspect.signature(fn).bind("response", {"answer": ""}, **kwargs)
    except TypeError as exc:
        raise RewardConfigError(f"reward function {spec!r} must accept (response, sample"
                                f"{', ' + ', '.join(kwargs) if kwargs else ''}): {exc}") from exc
    except ValueError:
        pass  # builtins without a signature: trust them
    return functools.partial(fn, **kwargs) if kwargs else fn


def _load_file(path: str):
    """Import a reward file once per process (its functions share the module, as in a package)."""
    real = os.path.realpath(path)
    mod_name = "or1_user_reward_" + hashlib.sha1(real.encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module_spec = importlib.util.spec_from_file_location(mod_name, real)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise RewardConfigError(f"importing reward file {path!r} failed: {exc!r}") from exc
    sys.modules[mod_name] = module
    return module


def reward_hook(fn: RewardFn, name: str) -> Callable | None:
    """The hook ``name`` of a loaded reward function (through the ``functools.partial`` of its kwargs)."""
    raw = fn.func if isinstance(fn, functools.partial) else fn
    hook = getattr(raw, name, None)
    return hook if callable(hook) else None


def bound_kwargs(fn: RewardFn) -> dict:
    return dict(fn.keywords) if isinstance(fn, functools.partial) else {}


def warm_up(fn: RewardFn) -> RewardFn:
    """Run the function's ``warmup`` hook if it has one; returns ``fn``."""
    hook = reward_hook(fn, "warmup")
    if hook is not None:
        hook()
    return fn


def reward_value(result: Any) -> tuple[float, dict[str, float]]:
    """Normalise a reward function's return value to (score, extra metrics).

    Accepted: a finite number (``int``, ``float``, ``bool``, numpy or torch scalars), or a dict
    with a numeric ``score`` and numeric extras. Anything else (a string such as ``"correct"``,
    None, NaN) raises ``ValueError`` saying what was returned.
    """
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"a reward dict must carry 'score', got keys {sorted(result)}")
        extras = {str(k): _number(v, f"extra {k!r}") for k, v in result.items() if k != "score"}
        return _number(result["score"], "'score'"), extras
    return _number(result, "the reward"), {}


def _number(value: Any, what: str) -> float:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise ValueError(f"{what} must be a number, got {type(value).__name__} {value!r:.80}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    return number
