"""The resume state: saved and loaded without pickle, recovered after an interrupted save."""

from __future__ import annotations

import os

import torch

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.files import MARKER
from gpt2_scratch.model import GPT
from gpt2_scratch.train.state import Progress, load_train_state, save_train_state
from gpt2_scratch.train.step import configure_optimizer


def test_train_state_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=1))
    opt = configure_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    model(torch.randint(0, 100, (2, 5))).sum().backward()
    opt.step()
    folder = tmp_path / "train_state"
    rng_state = torch.get_rng_state()
    save_train_state(folder, model, opt, Progress(step=1, epoch=0), {"cpu.0": rng_state})
    assert sorted(p.name for p in folder.iterdir()) == [
        MARKER,
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    assert not list(tmp_path.glob(".train_state*"))  # no temporary folder left behind

    model2 = GPT(GPTConfig.from_preset("tiny", n_layer=1))
    opt2 = configure_optimizer(model2, 1e-3, 0.1, torch.device("cpu"))
    progress, rng = load_train_state(folder, model2, opt2)
    assert progress == Progress(step=1, epoch=0)
    assert torch.equal(rng["cpu.0"], rng_state)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s1["state"][i][key], s2["state"][i][key])

    # A save killed between its two renames leaves only the previous state as ".train_state.old": still loadable.
    os.replace(folder, tmp_path / ".train_state.old")
    assert load_train_state(folder, model2, opt2)[0].step == 1
