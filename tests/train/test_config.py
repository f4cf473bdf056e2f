import pytest

from trace_agents.train.config import ConfigError, TrainConfig, load_config


def test_defaults_and_equal_budget():
    cfg = TrainConfig()
    assert cfg.budget.total == 16 * (1 + 2 * 0.5)
    assert cfg.allocators == ["trace", "grpo"]


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nsteps: 2\nbudget: {roots: 8, continuations_per_root: 6}\n"
                    "env: {id: trace/Calculator-v0, kwargs: {max_turns: 3}}\n")
    cfg = load_config(path)
    assert (cfg.seed, cfg.steps, cfg.budget.roots, cfg.env.kwargs) == (3, 2, 8, {"max_turns": 3})
    assert load_config(path, {"steps": 5}).steps == 5


@pytest.mark.parametrize("text, message", [
    ("stepz: 3\n", "stepz: Extra inputs are not permitted"),
    ("steps: 0\n", "steps: Input should be greater than or equal to 1"),
    ("allocators: [trace, magic]\n", "allocators.1"),
    ("budget: {m_min: 6, m_max: 4}\n", "m_max must be at least m_min"),
    ("optim: {lr: -1}\n", "optim.lr"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("steps: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("kind, options", [("lexical", {}), ("lexical", {"normalize": True}), ("beta", {}),
                                           ("blend", {})])
def test_every_predictor_kind_learns_and_survives_a_checkpoint(kind, options, tmp_path):
    """The predictor a config names plans, refits and resumes: its state after an update, saved
    in a checkpoint and loaded into a fresh one, gives the same predictions."""
    import numpy as np

    from trace_agents.train.checkpoint import load_checkpoint, save_checkpoint
    from trace_agents.train.loop import make_predictor
    from trace_allocation.tree import TURN_MARK

    cfg = TrainConfig.model_validate({"predictor": {"kind": kind, "options": options}})
    texts = [f"What is {a} + {b}?" for a, b in [(1, 2), (30, 4), (5, 600)]]
    texts += [texts[0] + TURN_MARK + "<tool_call>...</tool_call>"]
    predictor = make_predictor(cfg)
    predictor.update(texts, np.array([1.0, 0.0, 0.5, 1.0]), np.ones(4))
    fresh = make_predictor(cfg)
    save_checkpoint(tmp_path, step=0, models={}, optimizers={},
                    states={"trace": {"predictor": predictor.state_dict()}})
    fresh.load_state_dict(load_checkpoint(tmp_path, models={}, optimizers={}).states["trace"]["predictor"])
    np.testing.assert_allclose(fresh.predict(texts), predictor.predict(texts))
    assert ((predictor.predict(texts) >= 0) & (predictor.predict(texts) <= 1)).all()
    assert all(getattr(predictor, name) == value for name, value in options.items())


def test_threads_default_leaves_a_core_for_the_event_loop(monkeypatch):
    import os

    import torch

    from trace_agents.models import set_threads, threads_alone

    before = torch.get_num_threads()
    try:
        for cpus, expected in ((1, 1), (2, 1), (16, 15)):
            monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
            assert set_threads(0) == expected == torch.get_num_threads()
        assert set_threads(3) == 3 == torch.get_num_threads()
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
        set_threads(0)
        with threads_alone(0) as inside:  # the update: nothing else runs, every core
            assert inside == 2 == torch.get_num_threads()
        assert torch.get_num_threads() == 1
        with threads_alone(3) as inside:  # an explicit count holds everywhere
            assert inside == 3
        with pytest.raises(ValueError, match="threads must be 0"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)
    assert TrainConfig().threads == 0


def test_stage1_guards_reach_traces_allocator_only():
    import numpy as np

    from trace_agents.train.loop import make_allocator
    from trace_allocation.predictors import LexicalPredictor, SkillShrunk

    cfg = TrainConfig.model_validate({"predictor": {"shrink": True}, "budget": {"min_prompts": 3}})
    trace = make_allocator("trace", cfg, np.random.default_rng(0))
    assert isinstance(trace.predictor, SkillShrunk) and trace.min_prompts == 3
    assert isinstance(make_allocator("pcl", cfg, np.random.default_rng(0)).predictor, LexicalPredictor)
    plain = make_allocator("trace", TrainConfig(), np.random.default_rng(0))
    assert isinstance(plain.predictor, LexicalPredictor) and plain.min_prompts == 0
