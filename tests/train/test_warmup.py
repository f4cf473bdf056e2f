import gymnasium as gym

from trace_agents.models import tiny_qwen3
from trace_agents.dialects import make_dialect
from trace_agents.train.warmup import demonstration_tokens, warm_start


def test_demonstration_trains_exactly_the_action_tokens():
    _, tok = tiny_qwen3()
    env = gym.make("trace/Calculator-v0", suite_options={"size": 20, "seed": 1})
    task = env.tasks[3]
    dialect = make_dialect(tok)
    ids, mask = demonstration_tokens(env, task.id, dialect)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "".join(dialect.render_action(m) for m in env.demonstration(task))
    assert trained.startswith('<tool_call>{"name": "calculator", "arguments": {"expression": ')
    assert f"<tool_response>\n{task.answer}" not in trained  # observations are never trained


def test_warm_start_lowers_the_loss():
    model, tok = tiny_qwen3()
    env = gym.make("trace/Calculator-v0", suite_options={"size": 20, "seed": 1})
    stats = warm_start(model, tok, env, examples=8, epochs=8, lr=3e-3, micro_batch=4)
    assert stats["examples"] == 8 and stats["loss_last"] < 0.6 * stats["loss_first"]
