"""Placement plans, the cluster check, the memory estimate, core assignment and sync buckets:
pure functions, checked against hand-worked layouts."""

import pytest
from omegaconf import OmegaConf

from or1.config import OR1Config
from or1.placement import ModelShape, check_cluster, estimate_memory_gib, micro_batch_tokens_at_most, plan_placement
from or1.workers.backends import weight_buckets


def config(**sections) -> OR1Config:
    cfg = OmegaConf.structured(OR1Config)
    cfg.model.path = "unused"
    for section, values in sections.items():
        for k, v in values.items():
            cfg[section][k] = v
    return OmegaConf.to_object(cfg)


def test_colocated_two_nodes_with_tensor_parallel_engines():
    plan = plan_placement(config(trainer={"nnodes": 2, "gpus_per_node": 4},
                                 learner={"num_workers": 8}, rollout={"num_engines": 4, "tensor_parallel_size": 2}))
    assert plan.mode == "colocated" and plan.total_gpus == 8
    assert [s.gpus for s in plan.learners] == [[g] for g in range(8)]
    assert [s.gpus for s in plan.engines] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [s.nodes(4) for s in plan.engines] == [[0], [0], [1], [1]]  # no engine straddles nodes


def test_split_aligns_engines_to_their_tensor_parallel_size():
    plan = plan_placement(config(trainer={"placement": "split", "nnodes": 1, "gpus_per_node": 8},
                                 learner={"num_workers": 3}, rollout={"num_engines": 2, "tensor_parallel_size": 2}))
    assert [s.gpus[0] for s in plan.learners] == [0, 1, 2]
    assert [s.gpus for s in plan.engines] == [[4, 5], [6, 7]]  # GPU 3 left idle: an engine may not start on it


@pytest.mark.parametrize("sections, message", [
    ({"trainer": {"gpus_per_node": 8}, "learner": {"num_workers": 4}}, "set learner.num_workers=8"),
    ({"trainer": {"gpus_per_node": 4, "placement": "split"}, "learner": {"num_workers": 3},
      "rollout": {"num_engines": 1, "tensor_parallel_size": 2}}, "split placement needs 3 learner GPUs"),
    ({"trainer": {"gpus_per_node": 6}, "learner": {"num_workers": 6}, "rollout": {"num_engines": 2,
                                                                                 "tensor_parallel_size": 4}},
     "must divide trainer.gpus_per_node=6"),
    ({"rollout": {"tensor_parallel_size": 2}}, "needs GPUs"),
])
def test_impossible_layouts_are_refused_with_the_fields_named(sections, message):
    with pytest.raises(ValueError, match=message):
        plan_placement(config(**sections))


def test_cluster_check_names_what_is_missing():
    plan = plan_placement(config(trainer={"nnodes": 2, "gpus_per_node": 8}, learner={"num_workers": 16},
                                 rollout={"num_engines": 16}))
    one_node = [{"Alive": True, "Resources": {"CPU": 64, "GPU": 8}}]
    with pytest.raises(RuntimeError, match=r"2 node\(s\) with 8 GPUs each .* has 8 GPUs on 1 node\(s\)"):
        check_cluster(plan, one_node)
    check_cluster(plan, one_node * 2)  # enough: no error
    dead = [{"Alive": False, "Resources": {"CPU": 64, "GPU": 8}}]
    with pytest.raises(RuntimeError, match="GPUs"):
        check_cluster(plan, one_node + dead)
    cpu_plan = plan_placement(config(learner={"num_workers": 2, "num_cpus": 1}, rollout={"num_engines": 2}))
    with pytest.raises(RuntimeError, match="needs 4 CPUs .* has 2"):
        check_cluster(cpu_plan, [{"Resources": {"CPU": 2}}])


def test_memory_estimate_by_hand():
    cfg = config(trainer={"gpus_per_node": 8, "gpu_memory_gib": 80},
                 learner={"num_workers": 8, "compute_dtype": "bfloat16", "max_tokens_per_micro_batch": 2048,
                          "gradient_checkpointing": False},
                 rollout={"num_engines": 8, "gpu_memory_utilization": 0.5, "max_model_len": 1024})
    plan = plan_placement(cfg)
    shape = ModelShape(num_params=8 * 2**30, hidden_size=1024, num_layers=10, vocab_size=1000)
    mem = estimate_memory_gib(cfg, plan, shape)
    assert mem["learner_weights"] == pytest.approx(4.0)  # 8 Gi float32 params / 8 ranks
    assert mem["learner_state"] == pytest.approx(16.0)  # 8 Gi params x 16 bytes / 8 ranks
    tokens = 2 * 1024
    activations = 34 * 1024 * tokens * 10 / 2**30
    logits = 12 * 1000 * tokens / 2**30  # float32 logits, softmax, grad
    assert mem["learner_activations"] == pytest.approx(activations)
    assert mem["learner_logits"] == pytest.approx(logits)
    assert mem["vllm_total"] == 40.0 and mem["vllm_weights"] == pytest.approx(16.0)
    # init: only this rank's shard of the weights (the whole float32 model would be 32 GiB)
    assert mem["peak_init"] == pytest.approx(4.0)
    assert mem["peak_update"] == pytest.approx(16.0 + activations + logits)
    # save: weights and moments (gradients freed) + one 512 MiB bucket
    assert mem["peak_save"] == pytest.approx(12.0 + 0.5)
    assert mem["peak_generation"] == pytest.approx(52.0) and mem["peak"] == pytest.approx(52.0)
    cfg.algorithm.kl.enabled = True  # the frozen reference model: one more sharded copy of the weights
    assert estimate_memory_gib(cfg, plan, shape)["peak_init"] == pytest.approx(8.0)
    cfg.learner.logits_chunk_tokens = 256
    assert estimate_memory_gib(cfg, plan, shape)["learner_logits"] == pytest.approx(12 * 1000 * 256 / 2**30)
    # a budget below one full-length sequence: that sequence still runs (alone); by rows: rows x full length
    cfg.learner.max_tokens_per_micro_batch = 512
    assert micro_batch_tokens_at_most(cfg) == 1024
    cfg.learner.max_tokens_per_micro_batch, cfg.learner.micro_batch_sequences = 0, 3
    assert micro_batch_tokens_at_most(cfg) == 3 * 1024


def test_weight_buckets_keep_decoder_layers_whole():
    shapes = [("model.embed_tokens.weight", (100, 10)),
              ("model.layers.0.self_attn.q_proj.weight", (10, 10)), ("model.layers.0.mlp.up_proj.weight", (10, 10)),
              ("model.layers.1.self_attn.q_proj.weight", (10, 10)), ("model.layers.1.mlp.up_proj.weight", (10, 10)),
              ("model.layers.10.self_attn.q_proj.weight", (10, 10)), ("model.layers.10.mlp.up_proj.weight", (10, 10)),
              ("model.norm.weight", (10,))]
    # 4 bytes per element: embed 4000 B, each layer 800 B, norm 40 B
    assert weight_buckets(shapes, 4, 2000) == [
        ["model.embed_tokens.weight"],
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
         "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"],
        ["model.layers.10.self_attn.q_proj.weight", "model.layers.10.mlp.up_proj.weight", "model.norm.weight"]]
    assert weight_buckets(shapes, 4, 10**9) == [[n for n, _ in shapes]]
    assert len(weight_buckets(shapes, 4, 1)) == 5  # a unit never splits, however small the bucket


def test_off_policy_cpu_actors_get_cores_of_their_own():
    from or1.placement import cpu_cores

    plan = plan_placement(config(trainer={"off_policy_steps": 1}, learner={"num_cpus": 2}, rollout={"num_cpus": 1}))
    assert cpu_cores(plan, available=[0, 1, 2, 3]) == {("rollout", 0): [0], ("learner", 0): [1, 2]}
    assert cpu_cores(plan, available=[0, 1]) == {}  # 3 wanted, 2 here: no pinning (and a warning)
