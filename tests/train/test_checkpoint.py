import random

import numpy as np
import pytest
import torch

from trace_agents.train.checkpoint import load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 4))
    model[1].weight = torch.nn.Parameter(model[0].weight.T.contiguous())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model, optim):
    x = torch.randn(3, 4)
    loss = model(x).pow(2).mean() + random.random() + float(np.random.rand())
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.item()


def test_resume_continues_exactly(tmp_path):
    model, optim = make()
    train_step(model, optim)
    save_checkpoint(tmp_path, step=0, models={"p": model}, optimizers={"p": optim},
                    states={"predictor": {"w": np.arange(3.0)}, "data": [5, 1, 2]})
    expected = [train_step(model, optim) for _ in range(2)]

    model2, optim2 = make()
    loaded = load_checkpoint(tmp_path, models={"p": model2}, optimizers={"p": optim2})
    assert loaded.step == 0 and loaded.states["data"] == [5, 1, 2]
    np.testing.assert_array_equal(loaded.states["predictor"]["w"], np.arange(3.0))
    assert [train_step(model2, optim2) for _ in range(2)] == expected
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_missing_and_corrupt(tmp_path):
    model, optim = make()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path, models={"p": model}, optimizers={})
    save_checkpoint(tmp_path, step=3, models={"p": model}, optimizers={}, states={})
    (tmp_path / "checkpoint" / "meta.json").write_text("{oops")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path, models={"p": model}, optimizers={})


def test_saving_replaces_the_previous_checkpoint(tmp_path):
    model, optim = make()
    save_checkpoint(tmp_path, step=1, models={"p": model}, optimizers={}, states={})
    save_checkpoint(tmp_path, step=2, models={"p": model}, optimizers={}, states={})
    assert load_checkpoint(tmp_path, models={"p": model}, optimizers={}).step == 2
    assert not (tmp_path / "checkpoint.tmp").exists()
