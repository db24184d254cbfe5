"""``python -m or1.train recipe=NAME [overrides...]`` — the training entry point.

``recipe=NAME`` selects ``recipes/NAME.yaml`` (default: ``tiny_cpu``); any field can be overridden
(``trainer.total_steps=20``, ``model.path=DIR``). Hydra's own flags work too (``--cfg job`` prints
the resolved config and exits). The recipes directory can be moved with ``OR1_RECIPES_DIR``.

Mistakes in the input stop the run at once with one line naming the input and what to do:
unknown or renamed keys, bad choices and types (at composition), inconsistent settings, missing
or malformed data files, a missing model path, an unusable reward function, an unreachable
sandbox or Ray address (``or1.startup.preflight``), all before anything expensive starts.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

DEFAULT_RECIPE = "tiny_cpu"
RECIPES_DIR = Path(os.environ.get("OR1_RECIPES_DIR", Path(__file__).resolve().parents[1] / "recipes"))

log = logging.getLogger("or1")


def run(cfg) -> dict:
    """Hydra's task function: the composed config in, the run's first and last validation out."""
    from omegaconf import OmegaConf

    from or1.config import OR1Config, refuse_unknown_keys, validate_config
    from or1.startup import build

    with input_errors_as_exit():
        refuse_unknown_keys(cfg)
        typed: OR1Config = OmegaConf.to_object(cfg)
        if typed.trainer.dry_run:
            from or1.placement import describe, model_shape, plan_placement

            validate_config(typed)
            print(describe(typed, plan_placement(typed), model_shape(typed)))
            return {}
        trainer = build(typed)
    try:
        return trainer.fit()
    finally:
        trainer.shutdown()


def command_main(build_and_run, run_dir: str, *overrides: str) -> None:
    """``main`` of the commands that read a given model and data and create neither (``or1.data.filter``,
    ``or1.eval``): the bare schema composed from the command line (``recipe=`` optional), Hydra's run
    directory ``run_dir``; ``build_and_run(typed config)`` runs with input mistakes as one line."""
    import hydra
    from omegaconf import OmegaConf

    from or1.config import refuse_unknown_keys, register_configs

    def run(cfg) -> None:
        with input_errors_as_exit():
            refuse_unknown_keys(cfg)
            typed = OmegaConf.to_object(cfg)
            typed.tiny.enabled = False  # no tiny model or data is created for them
            build_and_run(typed)

    register_configs()
    sys.argv = [sys.argv[0], *_translate_argv(sys.argv[1:], default_recipe=None, run_dir=run_dir), *overrides]
    hydra.main(config_path=str(RECIPES_DIR), config_name="or1_config", version_base=None)(run)()


class input_errors_as_exit:
    """Mistakes in the input end the process with their message alone (exit status 2), not a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from or1.config import ConfigError
        from or1.data.dataset import DataError
        from or1.rewards.loader import RewardConfigError
        from or1.startup import StartupError

        if exc is not None and isinstance(exc, (ConfigError, DataError, RewardConfigError, StartupError)):
            print(f"or1: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        return False


# Hydra flags that take a value as the next argument (``--cfg job``).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-dir", "-cd",
                     "--info", "-i", "--experimental-rerun"}


def _translate_argv(argv: list[str], default_recipe: str | None = DEFAULT_RECIPE,
                    run_dir: str = "${trainer.output_dir}") -> list[str]:
    """``recipe=NAME`` -> Hydra's ``--config-name NAME``; the run directory is ``run_dir``.

    With no ``recipe=`` and no ``default_recipe``, the bare schema (``or1_config``) is composed.
    Flags go before overrides: Hydra's argparse takes its positional overrides in one run.
    """
    from or1.config import renamed_keys_hint

    recipe, flags, rest = default_recipe, [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg in _FLAGS_WITH_VALUE:
            flags += [arg, next(args, "")]
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            rest.append(arg)
    if recipe is not None and not (RECIPES_DIR / f"{recipe}.yaml").is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))
        raise SystemExit(f"unknown recipe {recipe!r}; recipes in {RECIPES_DIR}: {', '.join(known)}")
    hint = renamed_keys_hint(rest)
    if hint:
        raise SystemExit(f"or1: {hint}")
    if ("--cfg" in flags or "-c" in flags) and "--resolve" not in flags:
        flags.append("--resolve")  # print values, not ${...} interpolations
    extra = [] if any(a.startswith("hydra.run.dir=") for a in rest) else [f"hydra.run.dir={run_dir}"]
    name = ["--config-name", recipe, f"recipe={recipe}"] if recipe is not None else ["--config-name", "or1_config"]
    return [*flags, *name, *extra, *rest]


def main() -> None:
    import hydra

    from or1.config import register_configs

    register_configs()
    sys.argv = [sys.argv[0], *_translate_argv(sys.argv[1:])]
    hydra.main(config_path=str(RECIPES_DIR), config_name=DEFAULT_RECIPE, version_base=None)(run)()


if __name__ == "__main__":
    main()
