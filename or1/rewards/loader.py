"""Resolving the configured reward function (``reward.fn``) to a callable, at start-up."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
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
        mod_name = "or1_user_reward_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise RewardConfigError(f"importing reward file {target!r} failed: {exc!r}") from exc
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


def reward_value(result: Any) -> tuple[float, dict[str, float]]:
    """Normalise a reward function's return value to (score, extra metrics)."""
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"a reward dict must carry 'score', got keys {sorted(result)}")
        extras = {k: float(v) for k, v in result.items() if k != "score"}
        return float(result["score"]), extras
    return float(result), {}
