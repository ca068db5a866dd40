"""mnistkit's optimisers and schedules against torch.optim's, step for step, on the seed
network: they must train the same weights (SGD bit for bit) without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mnistkit.config import TrainConfig
from mnistkit.network import Network
from mnistkit.optim import make_optimizer

STEPS_PER_EPOCH = 6
EPOCHS = 3


def _torch_optim(config: TrainConfig, net: Network) -> tuple[torch.optim.Optimizer, object]:
    params = net.parameters()
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True
        )
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    else:
        opt = torch.optim.Adadelta(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    total = EPOCHS * STEPS_PER_EPOCH
    sched = {
        "none": lambda: None,
        "step": lambda: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, total_steps=total, cycle_momentum=config.optimizer == "sgd"
        ),
    }[config.scheduler]()
    return opt, sched


def _train(net: Network, step_fn, epoch_fn, lrs: list[float]) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(3)
    for _ in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            x = torch.randn(16, 1, 28, 28, generator=gen)
            y = torch.randint(0, 10, (16,), generator=gen)
            net.eval()  # no dropout: both runs see the same function
            for p in net.parameters():
                p.grad = None
            F.nll_loss(net(x), y).backward()
            lrs.append(step_fn())
        epoch_fn()


CASES = [
    ("sgd", "none", 0.05, 0.5, 0.0),
    ("sgd", "none", 0.05, 0.0, 0.0),
    ("sgd", "step", 0.05, 0.9, 1e-3),
    ("sgd", "onecycle", 0.05, 0.5, 0.0),
    ("sgd", "cosine", 0.05, 0.5, 0.0),
    ("adam", "none", 0.003, 0.5, 0.0),
    ("adam", "onecycle", 0.008, 0.5, 1e-4),
    ("adadelta", "step", 1.0, 0.5, 1e-3),
]


@pytest.mark.parametrize(("optimizer", "scheduler", "lr", "momentum", "weight_decay"), CASES)
def test_same_weights_and_rates_as_torch_optim(optimizer, scheduler, lr, momentum, weight_decay) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(
        optimizer=optimizer, scheduler=scheduler, lr=lr, momentum=momentum, weight_decay=weight_decay, epochs=EPOCHS
    )
    torch.manual_seed(0)
    ours_net = Network().to(memory_format=torch.channels_last)  # as fit() holds it
    theirs_net = Network().to(memory_format=torch.channels_last)
    theirs_net.load_state_dict(ours_net.state_dict())
    start = {k: v.clone() for k, v in ours_net.state_dict().items()}

    opt, sched = make_optimizer(config, ours_net.parameters(), STEPS_PER_EPOCH)
    ours_lrs: list[float] = []

    def ours_step() -> float:
        lr_used = opt.lr
        opt.step()
        if sched is not None and sched.per_batch:
            sched.step()
        return lr_used

    _train(ours_net, ours_step, lambda: sched.step() if sched is not None and not sched.per_batch else None, ours_lrs)

    t_opt, t_sched = _torch_optim(config, theirs_net)
    theirs_lrs: list[float] = []

    def theirs_step() -> float:
        lr_used = t_opt.param_groups[0]["lr"]
        t_opt.step()
        if t_sched is not None and scheduler != "step":
            t_sched.step()  # type: ignore[attr-defined]
        return lr_used

    _train(
        theirs_net,
        theirs_step,
        lambda: t_sched.step() if scheduler == "step" else None,
        theirs_lrs,  # type: ignore[attr-defined]
    )

    assert ours_lrs == theirs_lrs  # the same rates, to the bit
    assert len(set(ours_lrs)) == 1 if scheduler == "none" else len(set(ours_lrs)) > 1
    for (name, a), b in zip(ours_net.state_dict().items(), theirs_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same foreach ops in the same order: the same bits
    assert all(not torch.equal(v, start[k]) for k, v in ours_net.state_dict().items())  # every tensor trained


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adadelta"])
def test_a_parameter_without_a_gradient_is_left_alone_and_counted_apart(optimizer) -> None:
    """fc2 gets no gradient for the first 3 steps: it must not move, and once it does, its
    updates (Adam's bias correction) count its own steps, as torch.optim's do."""
    torch.manual_seed(0)
    ours, theirs = Network(), Network()
    theirs.load_state_dict(ours.state_dict())
    config = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9)
    opt, _ = make_optimizer(config, ours.parameters(), 1)
    t_opt, _ = _torch_optim(config, theirs)
    start = ours.fc2.weight.detach().clone()
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        for net, o in ((ours, opt), (theirs, t_opt)):
            net.eval()
            o.zero_grad()
            F.nll_loss(net(x), y).backward()
            if step < 3:
                net.fc2.weight.grad = net.fc2.bias.grad = None
            o.step()
        if step < 3:
            assert torch.equal(ours.fc2.weight, start)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.fc2.weight, start)


def test_onecycle_refuses_steps_past_its_end() -> None:
    config = TrainConfig(optimizer="adam", scheduler="onecycle", lr=0.01, epochs=1)
    opt, sched = make_optimizer(config, Network().parameters(), 4)
    assert sched is not None
    for _ in range(4):
        sched.step()
    with pytest.raises(ValueError, match="5 times"):
        sched.step()


def test_training_does_not_import_torch_dynamo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the module is for: a training process never pays torch._dynamo's import."""
    code = (
        "import sys\n"
        "from mnistkit.config import TrainConfig\n"
        "from mnistkit.data import load_mnist\n"
        "from mnistkit.train import fit\n"
        f"fit(TrainConfig(epochs=1, train_samples=256, test_samples=256, output_dir={str(tmp_path)!r}))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "step"])
def test_long_schedules_give_torchs_rates_to_the_bit(scheduler):
    """A real run's length (14 epochs of 469 steps), and for cosine past its end, where torch's
    recursive form goes back up: the rates themselves, with no training in between."""
    steps, epochs = 469, 14
    config = TrainConfig(optimizer="sgd", scheduler=scheduler, lr=0.05, momentum=0.9, epochs=epochs)
    ours, sched = make_optimizer(config, Network().parameters(), steps)
    t_opt = torch.optim.SGD(Network().parameters(), lr=0.05, momentum=0.9)  # no gradients: steps change nothing
    t_sched = {
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=epochs * steps),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.05, total_steps=epochs * steps),
        "step": lambda: torch.optim.lr_scheduler.StepLR(t_opt, step_size=1, gamma=0.7),
    }[scheduler]()
    assert sched is not None
    n = {"cosine": 3 * epochs * steps, "onecycle": epochs * steps - 1, "step": epochs}[scheduler]
    for i in range(n):
        assert ours.lr == t_opt.param_groups[0]["lr"], i
        if scheduler == "onecycle":
            assert ours.momentum == t_opt.param_groups[0]["momentum"], i  # type: ignore[attr-defined]
        t_opt.step()
        t_sched.step()
        sched.step()
