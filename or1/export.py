"""``python -m or1.export SRC --out DIR``: a policy as a Hugging Face model directory.

SRC is a checkpoint directory (``.../checkpoints/step_00000100``), a run's output directory (its
latest complete checkpoint), or a Hugging Face model directory such as a run's ``final/``
(re-saved, e.g. to change ``--dtype``). Checkpoints of both learner backends are read in this one
process, without a process group: FSDP2's with torch distributed checkpoint, DeepSpeed ZeRO's by
reassembling the float32 weights from every rank's partition. The result loads in transformers
and vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from or1.checkpoint import CHECKPOINTS, STATE_FILE, CheckpointDirs


class ExportError(ValueError):
    """SRC is not something that can be exported; the message says what it is and what is expected."""


def find_checkpoint(src: Path) -> Path:
    """The checkpoint directory ``src`` names: itself, or a run directory's latest complete one."""
    if (src / STATE_FILE).is_file() and (src / "learner").is_dir():
        return src
    if (src / CHECKPOINTS).is_dir():
        latest = CheckpointDirs(src).latest()
        if latest is None:
            raise ExportError(f"{src} has a {CHECKPOINTS}/ directory but no complete checkpoint in it "
                              "(a run killed before its first save leaves only *.tmp directories)")
        return latest
    if not src.exists():
        raise ExportError(f"{src} does not exist")
    raise ExportError(f"{src} is neither a checkpoint (<run>/{CHECKPOINTS}/step_N, with {STATE_FILE} and learner/), "
                      f"a run directory with {CHECKPOINTS}/, nor a Hugging Face model directory (config.json)")


def is_hf_model_dir(src: Path) -> bool:
    return (src / "config.json").is_file() and not (src / "learner").exists()


def export_checkpoint(src: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from or1.workers.backends import torch_dtype

    src = Path(src)
    if is_hf_model_dir(src):  # e.g. a run's final/: load and save again
        model = AutoModelForCausalLM.from_pretrained(src)
        if dtype:
            model.to(torch_dtype(dtype))
        return write_hf_dir(model, None, out, src)
    path = find_checkpoint(src)
    backend = json.loads((path / STATE_FILE).read_text()).get("learner_backend", "fsdp")
    if not (path / "hf" / "config.json").is_file():
        raise ExportError(f"checkpoint {path} has no hf/config.json (the model's configuration); it is incomplete")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / "hf"))
    if backend == "deepspeed":
        _load_deepspeed(model, path / "learner")
    else:
        import torch.distributed.checkpoint as dcp

        state = {"model": model.state_dict()}
        dcp.load(state, checkpoint_id=str(path / "learner"), no_dist=True)
        model.load_state_dict(state["model"])
    if dtype:
        model.to(torch_dtype(dtype))
    return write_hf_dir(model, None, out, path / "hf")


def _load_deepspeed(model, learner_dir: Path) -> None:
    """Reassemble the float32 weights of a DeepSpeed ZeRO checkpoint (any stage, any number of ranks)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(learner_dir), tag="state")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if getattr(model.config, "tie_word_embeddings", False) and k == "lm_head.weight"}
    if set(missing) - tied or unexpected:
        raise ExportError(f"the DeepSpeed checkpoint in {learner_dir} does not match its model: missing "
                          f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()


def write_hf_dir(model, state_dict: dict | None, out: str | Path, tokenizer_path: str | Path | None) -> Path:
    """Save ``model`` (with ``state_dict`` if given) and the tokenizer as a Hugging Face directory.

    Written under a temporary name and renamed, so ``out`` is never a half-written model.
    """
    from transformers import AutoTokenizer

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    if tokenizer_path:
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a checkpoint directory, a run's output directory, or a Hugging Face model directory")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights")
    a = p.parse_args()
    try:
        print(f"wrote {export_checkpoint(a.src, a.out, a.dtype)}")
    except ExportError as exc:
        print(f"or1.export: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
