"""Checkpoint directories: atomic visibility, the latest pointer, pruning, resume resolution."""

import pytest

from or1.checkpoint import CheckpointDirs, resolve_resume


def make(dirs, step, keep=3):
    tmp = dirs.begin(step)
    (tmp / "trainer_state.json").write_text("{}")
    return dirs.commit(tmp, keep)


def test_commit_prune_and_latest(tmp_path):
    dirs = CheckpointDirs(tmp_path)
    assert dirs.latest() is None and resolve_resume("auto", tmp_path) is None
    for step in (1, 2, 3, 4):
        make(dirs, step)
    assert [p.name for p in dirs.complete()] == ["step_00000002", "step_00000003", "step_00000004"]
    assert dirs.latest().name == "step_00000004" == resolve_resume("auto", tmp_path).name
    assert resolve_resume("off", tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoints" / "step_00000003"), tmp_path).name == "step_00000003"


def test_half_written_checkpoints_are_never_picked(tmp_path):
    dirs = CheckpointDirs(tmp_path)
    make(dirs, 5)
    tmp = dirs.begin(6)  # a save that never finished: shards but no commit
    (tmp / "learner").mkdir()
    assert dirs.latest().name == "step_00000005"
    # a stale pointer (the directory it names is gone) falls back to the newest complete one
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009\n")
    assert dirs.latest().name == "step_00000005"
    dirs.begin(7)  # the next save clears leftovers
    assert not (tmp_path / "checkpoints" / "step_00000006.tmp").exists()


def test_bad_resume_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "nothing"), tmp_path)
