"""``python -m or1.train recipe=NAME [overrides...]`` — the training entry point.

``recipe=NAME`` selects ``recipes/NAME.yaml`` (default: ``tiny_cpu``); any field can be overridden
(``trainer.total_steps=20``, ``model.path=DIR``). Hydra's own flags work too (``--cfg job`` prints
the resolved config and exits). The recipes directory can be moved with ``OR1_RECIPES_DIR``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

DEFAULT_RECIPE = "tiny_cpu"
RECIPES_DIR = Path(os.environ.get("OR1_RECIPES_DIR", Path(__file__).resolve().parents[1] / "recipes"))

log = logging.getLogger("or1")


def bootstrap_tiny(cfg) -> None:
    """For the tiny recipe: write the arithmetic data and a warmed-up tiny model if missing."""
    from or1.data.arithmetic import generate_splits, write_jsonl
    from or1.tiny import TinySpec, create_tiny_model

    t = cfg.tiny
    train, val = generate_splits(t.n_train, t.n_val, max_operand=t.max_operand, seed=t.seed)
    for files, rows in ((cfg.data.train_files, train), (cfg.data.val_files, val)):
        for f in files:
            if not os.path.exists(f):
                write_jsonl(rows, f)
    if not os.path.exists(cfg.model.path):
        log.info("creating the tiny model at %s (%d warm-up steps)", cfg.model.path, t.warmup_steps)
        create_tiny_model(cfg.model.path, TinySpec(hidden_size=t.hidden_size, num_layers=t.num_layers,
                                                   seed=t.seed),
                          warmup_steps=t.warmup_steps, warmup_rows=train, warmup_lr=t.warmup_lr,
                          label_noise=t.label_noise)


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from or1.config import OR1Config
    from or1.trainer import Trainer

    typed: OR1Config = OmegaConf.to_object(cfg)
    if typed.trainer.dry_run:
        from or1.placement import describe, model_shape, plan_placement

        print(describe(typed, plan_placement(typed), model_shape(typed)))
        return {}
    if typed.tiny.enabled:
        bootstrap_tiny(typed)
    trainer = Trainer(typed)
    try:
        return trainer.fit()
    finally:
        trainer.shutdown()


# Hydra flags that take a value as the next argument (``--cfg job``).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-dir", "-cd",
                     "--info", "-i", "--experimental-rerun"}


def _translate_argv(argv: list[str]) -> list[str]:
    """``recipe=NAME`` -> Hydra's ``--config-name NAME``; the run directory is the output dir.

    Flags go before overrides: Hydra's argparse takes its positional overrides in one run.
    """
    recipe, flags, rest = DEFAULT_RECIPE, [], []
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
    if not (RECIPES_DIR / f"{recipe}.yaml").is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))
        raise SystemExit(f"unknown recipe {recipe!r}; recipes in {RECIPES_DIR}: {', '.join(known)}")
    if ("--cfg" in flags or "-c" in flags) and "--resolve" not in flags:
        flags.append("--resolve")  # print values, not ${...} interpolations
    extra = [] if any(a.startswith("hydra.run.dir=") for a in rest) else ["hydra.run.dir=${trainer.output_dir}"]
    return [*flags, "--config-name", recipe, f"recipe={recipe}", *extra, *rest]


def main() -> None:
    import hydra

    from or1.config import register_configs

    register_configs()
    sys.argv = [sys.argv[0], *_translate_argv(sys.argv[1:])]
    hydra.main(config_path=str(RECIPES_DIR), config_name=DEFAULT_RECIPE, version_base=None)(run)()


if __name__ == "__main__":
    main()
