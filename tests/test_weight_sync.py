"""Two real vLLM engines (Ray actors, tiny model), shared by the module's tests:

1. After a weight push every vLLM engine's log-probs equal the learners'; before it, with changed
weights, they do not.

Real Ray actors: two FSDP2 learner ranks (gloo) and two vLLM engines. vLLM runs in float32 so
the tolerance can be tight: 1e-4 nats per token (measured: ~4e-7). The learners' update is a real
optimizer step that changes every parameter, the tied embedding / LM head included (vLLM's CPU
path keeps a packed copy of that head, which a naive reload leaves stale). The push goes in
buckets far smaller than the model, so partial reloads must leave the other layers intact.

2. The offline difficulty filter (``or1.data.filter.run_filter``) on these engines and a real reward
pool, on a Parquet file in verl's layout: interrupted after its first round, then resumed. (The
whole command, killed with SIGKILL and run again, is ``tests/test_filter_e2e.py``, marked long: each
start of the command pays for a new vLLM engine.)
"""

import pytest
import torch

from or1.batch import SequenceBatch
from or1.config import LearnerConfig, ModelConfig, OptimConfig, RolloutConfig
from or1.data.dataset import render_prompt
from or1.workers.group import LearnerGroup, RolloutGroup

from .conftest import free_port

TOL = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engines(tiny_model, ray_local):
    from or1.workers.rollout import RolloutWorker

    rollout_cfg = RolloutConfig(max_model_len=64, dtype="float32", gpu_memory_utilization=0.05,
                                cpu_kvcache_space_gib=1, enforce_eager=True)
    group = RolloutGroup([ray_local.remote(num_cpus=0.5)(RolloutWorker).remote(str(tiny_model), rollout_cfg, seed)
                          for seed in range(2)])
    yield group
    for actor in group.actors:
        ray_local.kill(actor)


def test_bucketed_push_makes_every_engine_match_the_learners(tiny_model, ray_local, engines):
    ray = ray_local
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from or1.workers.learner import Learner

    tok = AutoTokenizer.from_pretrained(tiny_model)
    port = free_port()
    learners = LearnerGroup([ray.remote(num_cpus=0.5)(Learner).remote(
        ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-2, weight_decay=0.0), None,
        LearnerConfig(num_workers=2, torch_threads=1, max_tokens_per_micro_batch=256), rank, 2, "127.0.0.1", port, 0)
        for rank in range(2)])
    prompts = [render_prompt(tok, p, True) for p in ["1+2", "17+25", "9-4", "30+30"]]
    assert not learners.has_reference_model()  # KL off (OR1's default): no reference policy

    def gaps(seed: int):
        """Per engine: the largest |vLLM log-prob - learners' log-prob| over its sampled tokens."""
        out = []
        for e, engine in enumerate(engines.actors):
            samples = ray.get(engine.generate.remote(prompts, 4, 1.0, 1.0, 12, [seed + 10 * e + i for i in range(4)]))
            batch = SequenceBatch.from_lists([prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                                             torch.zeros(len(samples)), [s.logprobs for s in samples])
            learner_lp = learners.compute_log_probs(batch)  # packed micro-batches on two ranks
            assert batch.num_response_tokens > 20
            out.append(((learner_lp - batch.rollout_log_probs).abs().max().item(), batch, learner_lp))
        return out

    fresh = gaps(0)
    assert max(g for g, _, _ in fresh) < TOL, f"fresh engines and learners disagree: {[g for g, _, _ in fresh]}"

    _, batch, learner_lp = fresh[0]
    batch.advantages = torch.randn(batch.num_sequences, generator=torch.Generator().manual_seed(0))
    learners.update(batch.with_values(old_log_probs=learner_lp), 0.0)

    stale = [g for g, _, _ in gaps(1)]
    assert min(stale) > 100 * TOL, "the learners' update did not change their log-probs; the test proves nothing"

    stats = learners.push_weights(engines, "float32", bucket_mb=0.2)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert stats["sync/bytes"] == 4 * n_params  # every parameter, once (tied head not duplicated)
    assert stats["sync/buckets"] >= 3  # the embedding and each decoder layer travelled separately

    synced = [g for g, _, _ in gaps(2)]
    assert max(synced) < TOL, f"after the push engines and learners still disagree: {synced}"
    embed = "model.embed_tokens.weight"
    learner_sum = float(ray.get([a.full_parameters.remote() for a in learners.actors])[0][embed].double().sum())
    for sums in engines.weight_checksums([embed]):
        assert sums[embed] == pytest.approx(learner_sum, rel=1e-9, abs=1e-6)
    for actor in learners.actors:
        ray.kill(actor)


class Interrupted(Exception):
    pass


class StopAfter:
    """The engines, interrupted when generation round ``rounds + 1`` starts."""

    def __init__(self, engines, rounds: int):
        self.engines, self.rounds, self.prompts = engines, rounds, []

    def generate(self, prompt_token_ids, *args):
        if self.rounds == 0:
            raise Interrupted()
        self.rounds -= 1
        self.prompts.append(len(prompt_token_ids))
        return self.engines.generate(prompt_token_ids, *args)


def test_offline_filter_on_real_engines_resumes_after_an_interruption(tiny_model, engines, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from or1.data.dataset import PromptDataset
    from or1.data.filter import run_filter
    from or1.data.rows import load_rows
    from or1.rewards.manager import RewardManager
    from tests.fakes import config

    from .test_filter_e2e import first_byte_even

    rows = [{"data_source": "arith", "prompt": [{"role": "user", "content": f"{i}+{i + 1}"}], "ability": "math",
             "reward_model": {"ground_truth": json.dumps([str(2 * i + 1)]), "style": "rule"},
             "extra_info": {"index": i}} for i in range(24)]
    data_file = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data_file)
    cfg = config(tmp_path, **{
        "model.path": str(tiny_model), "data.train_files": [str(data_file)], "data.layout": "verl",
        "filter.k": 4, "filter.low": 0.25, "filter.high": 1.0, "filter.chunk_prompts": 8,
        "filter.output_dir": str(tmp_path / "filtered"), "rollout.max_response_length": 4,
        "reward.fn": f"{first_byte_even.__code__.co_filename}:first_byte_even", "reward.num_workers": 1})
    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = PromptDataset.from_rows(load_rows(cfg.data, cfg.data.train_files, "data.train_files"), tok, 16)
    rewards = RewardManager(cfg.reward, run_dir=str(tmp_path))
    try:
        with pytest.raises(Interrupted):
            run_filter(cfg, data, StopAfter(engines, 1), rewards, tok, max_tokens=4)
        out = tmp_path / "filtered"
        first = (out / "accuracy.jsonl").read_text().splitlines()
        assert len(first) == 8
        resumed = StopAfter(engines, 99)
        result = run_filter(cfg, data, resumed, rewards, tok, max_tokens=4)
    finally:
        rewards.close()
    assert resumed.prompts == [8, 8] and result.scored_now == 16  # the first round was not redone
    lines = (out / "accuracy.jsonl").read_text().splitlines()
    assert lines[:8] == first
    records = [json.loads(line) for line in lines]
    assert [r["row"] for r in records] == list(range(24)) and {r["k"] for r in records} == {4}
    assert len({r["correct"] for r in records}) >= 3, "the reward does not spread: the thresholds test nothing"
    kept = pq.read_table(out / "kept" / "train.parquet")
    assert kept.schema == pq.read_table(data_file).schema  # the input's format, nested fields included
    expected = [r["row"] for r in records if 0.25 < r["accuracy"] < 1]
    assert [r["extra_info"]["index"] for r in kept.to_pylist()] == expected and 0 < len(expected) < 24


def test_eval_on_real_engines_matches_a_recount_of_the_same_samples(tiny_model, engines, tmp_path):
    """``or1.eval.evaluate`` on real engines and the real reward pool: its per-source figures equal
    a recount from the same seeded samples scored by calling the reward function directly."""
    import json

    from transformers import AutoTokenizer

    from or1.data.dataset import PromptDataset
    from or1.data.rows import load_rows
    from or1.eval import EVAL_STREAM, evaluate
    from or1.evaluation import pass_at_k
    from or1.rewards.manager import RewardManager
    from or1.trainer import sampling_seeds
    from tests.fakes import config

    from .test_filter_e2e import first_byte_even

    rows = [{"prompt": f"{i}+{i}", "answer": str(2 * i), "data_source": "even" if i % 2 else "odd"} for i in range(12)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, **{"model.path": str(tiny_model), "data.val_files": [str(tmp_path / "val.jsonl")],
                              "eval.k": 6, "eval.output": str(tmp_path / "eval.json"),
                              "reward.fn": f"{first_byte_even.__code__.co_filename}:first_byte_even",
                              "reward.num_workers": 1})
    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = PromptDataset.from_rows(load_rows(cfg.data, cfg.data.val_files, "data.val_files"), tok, 16)
    rewards = RewardManager(cfg.reward, run_dir=str(tmp_path))
    try:
        summary = evaluate(cfg, data, engines, rewards, tok, max_tokens=4)
    finally:
        rewards.close()
    samples = engines.generate(data.prompt_ids, 6, 1.0, 1.0, 4, sampling_seeds(0, 0, 12, EVAL_STREAM))
    texts = tok.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
    correct = [[first_byte_even(t, {})["acc"] for t in texts[i * 6:(i + 1) * 6]] for i in range(12)]
    for source, members in (("odd", range(0, 12, 2)), ("even", range(1, 12, 2))):
        assert summary[source]["avg@6"] == pytest.approx(sum(sum(correct[i]) / 6 for i in members) / 6)
        assert summary[source]["pass@6"] == pytest.approx(sum(pass_at_k(6, int(sum(correct[i])), 6)
                                                              for i in members) / 6)
        assert summary[source]["pass@6"] >= summary[source]["avg@6"]
    assert 0 < summary["all"]["avg@6"] < 1  # the recount compares something


def test_a_session_takes_prompts_while_generating_and_aborts_the_rest(tiny_model, ray_local, engines):
    """The streaming refill's engine side: prompts added while others generate come back whole (all n),
    and an abort leaves no request of the session in any engine."""
    from transformers import AutoTokenizer

    from or1.workers.rollout import Sampling

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [render_prompt(tok, f"{i}+{i + 3}", True) for i in range(10)]
    sampling = Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=24)
    session = engines.session(sampling)
    session.add([(i, prompts[i], 100 + i) for i in range(6)])
    got = dict(session.next_finished())
    session.add([(i, prompts[i], 100 + i) for i in range(6, 8)])  # joins the running engines
    while session.pending:
        got.update(session.next_finished())
    assert sorted(got) == list(range(8)) and session.next_finished() == []
    for samples in got.values():
        assert len(samples) == 4 and all(len(s.logprobs) == len(s.token_ids) > 0 for s in samples)
        assert all(lp <= 0 for s in samples for lp in s.logprobs)

    cut = engines.session(Sampling(n=4, temperature=1.0, top_p=1.0, max_tokens=30))
    cut.add([(i, prompts[i % 10], i) for i in range(40)])
    handed_back = len(cut.next_finished())
    cut.abort()
    assert cut.pending == 0 and handed_back < 40
    # nothing of the session is left in the engines: asked to run until 10**6 requests finish, they return at once
    assert ray_local.get([a.run_requests.remote([], sampling, [], 10**6) for a in engines.actors]) == [[], []]
