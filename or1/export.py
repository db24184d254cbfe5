"""``python -m or1.export CKPT --out DIR``: a checkpoint's policy as a Hugging Face model directory.

CKPT is a checkpoint directory (``.../checkpoints/step_00000100``) or a run's output directory
(its latest complete checkpoint). The sharded weights are read with torch distributed checkpoint
in this one process (no process group needed) into the model the checkpoint's ``hf/config.json``
describes; the result loads in transformers and vLLM.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from or1.checkpoint import resolve_resume


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM

    from or1.workers.backends import torch_dtype

    path = resolve_resume(str(ckpt), ckpt)
    if path is None:
        raise FileNotFoundError(f"no complete checkpoint at {ckpt}")
    config = AutoConfig.from_pretrained(path / "hf")
    model = AutoModelForCausalLM.from_config(config)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path / "learner"), no_dist=True)
    model.load_state_dict(state["model"])
    if dtype:
        model.to(torch_dtype(dtype))
    return write_hf_dir(model, None, out, path / "hf")


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
    p.add_argument("ckpt", help="a checkpoint directory or a run's output directory")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, help="cast the weights (float32 | bfloat16 | float16)")
    a = p.parse_args()
    print(f"wrote {export_checkpoint(a.ckpt, a.out, a.dtype)}")


if __name__ == "__main__":
    main()
