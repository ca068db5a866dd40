"""The optimisers and learning-rate schedules ``fit`` trains with, on torch's foreach ops.

They compute what torch.optim's SGD, Adam and Adadelta (their ``foreach`` form) and its
StepLR, CosineAnnealingLR and OneCycleLR compute, step for step (tests/test_optim.py holds
them to it), without torch.optim: the first optimiser torch.optim builds imports
``torch._dynamo``, 0.64 s of every training process here (most of what a 2-epoch run spent
outside its epochs), paid again by every trial of a search.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import TrainConfig

__all__ = ["Optimizer", "SGD", "Adam", "Adadelta", "Schedule", "make_optimizer"]


class Optimizer:
    """One group of parameters and their state; ``lr`` (and SGD's ``momentum``) may be set
    between steps, as a schedule does."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.state: dict[str, dict[int, torch.Tensor]] = {}  # name -> id(parameter) -> tensor
        self.counts: dict[int, int] = {}  # id(parameter) -> updates it has had

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward pass allocates them anew)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        live: list[torch.Tensor] = [p for p in self.params if p.grad is not None]
        if not live:
            return
        grads: list[torch.Tensor] = [p.grad for p in live]  # type: ignore[misc]
        if self.weight_decay:
            grads = list(torch._foreach_add(grads, live, alpha=self.weight_decay))
        for p in live:
            self.counts[id(p)] = self.counts.get(id(p), 0) + 1
        self._update(live, grads)

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _state(self, params: list[torch.Tensor], name: str) -> list[torch.Tensor]:
        """Per-parameter state tensors, zeros at first."""
        store = self.state.setdefault(name, {})
        for p in params:
            if id(p) not in store:
                store[id(p)] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [store[id(p)] for p in params]


class SGD(Optimizer):
    """``p -= lr * b`` with ``b = momentum * b + g`` (``b = g`` the first time)."""

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if self.momentum:
            store = self.state.setdefault("momentum_buffer", {})
            bufs = [store.get(id(p)) for p in params]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, self.momentum)  # type: ignore[arg-type]
                torch._foreach_add_(bufs, grads)  # type: ignore[arg-type]
            else:
                for i, p in enumerate(params):
                    b = bufs[i]
                    if b is None:
                        b = bufs[i] = store[id(p)] = grads[i].detach().clone()
                    else:
                        b.mul_(self.momentum).add_(grads[i])
            grads = bufs  # type: ignore[assignment]
        torch._foreach_add_(params, grads, alpha=-self.lr)


class Adam(Optimizer):
    """Adam (betas 0.9, 0.999, eps 1e-8; weight decay added to the gradient, not AdamW's)."""

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        avgs, sqs = self._state(params, "exp_avg"), self._state(params, "exp_avg_sq")
        torch._foreach_lerp_(avgs, grads, 1 - self.beta1)
        torch._foreach_mul_(sqs, self.beta2)
        torch._foreach_addcmul_(sqs, grads, grads, 1 - self.beta2)
        counts = [float(self.counts[id(p)]) for p in params]  # each parameter's own, as torch's
        step_size = [(self.lr / (1 - self.beta1**n)) * -1 for n in counts]
        denom = torch._foreach_sqrt(sqs)
        torch._foreach_div_(denom, [(1 - self.beta2**n) ** 0.5 for n in counts])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, avgs, denom, step_size)


class Adadelta(Optimizer):
    """Adadelta (rho 0.9, eps 1e-6), the rate ``lr`` times the step it computes."""

    rho, eps = 0.9, 1e-6

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        sq_avgs, acc = self._state(params, "square_avg"), self._state(params, "acc_delta")
        torch._foreach_mul_(sq_avgs, self.rho)
        torch._foreach_addcmul_(sq_avgs, grads, grads, value=1 - self.rho)
        std = torch._foreach_add(sq_avgs, self.eps)
        torch._foreach_sqrt_(std)
        deltas = torch._foreach_add(acc, self.eps)
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, std)
        torch._foreach_mul_(deltas, grads)
        torch._foreach_mul_(acc, self.rho)
        torch._foreach_addcmul_(acc, deltas, deltas, value=1 - self.rho)
        torch._foreach_add_(params, deltas, alpha=-self.lr)


class Schedule:
    """The learning rate (and, for one-cycle SGD, the momentum) of each step.

    ``per_batch``: stepped after every batch, else after every epoch. ``step()`` moves to the
    next step and sets the optimiser's rate for it, as torch's schedulers do."""

    def __init__(self, kind: str, opt: Optimizer, total_steps: int, per_batch: bool) -> None:
        self.kind, self.opt, self.total, self.per_batch = kind, opt, total_steps, per_batch
        self.base_lr = opt.lr
        self.t = 0
        if kind == "onecycle":  # warm up from lr/25 over 30 % of the steps, then down to lr/25e4
            self.peak, self.start = opt.lr, opt.lr / 25.0
            self.end, self.warm_end = self.start / 1e4, float(0.3 * total_steps) - 1
            self.cycle_momentum = isinstance(opt, SGD)
        self._apply()

    def step(self) -> None:
        self.t += 1
        if self.kind == "onecycle" and self.t > self.total:
            raise ValueError(f"stepped {self.t} times; the schedule has {self.total} steps")
        self._apply()

    def _apply(self) -> None:
        if self.kind == "step":  # x 0.7 each epoch, compounded as torch's StepLR does
            self.opt.lr = self.opt.lr * 0.7 if self.t else self.base_lr
        elif self.kind == "cosine":  # torch's recursive form, to the bit (its closed form is not)
            t, total = self.t, self.total
            if not t:
                self.opt.lr = self.base_lr
            elif (t - 1 - total) % (2 * total) == 0:  # past the end: back up, as torch goes on
                self.opt.lr += self.base_lr * (1 - math.cos(math.pi / total)) / 2
            else:
                self.opt.lr *= (1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total))
        else:
            self._one_cycle()

    def _one_cycle(self) -> None:
        if self.t <= self.warm_end:
            pct, lr, momentum = self.t / self.warm_end, (self.start, self.peak), (0.95, 0.85)
        else:
            pct = (self.t - self.warm_end) / (self.total - 1 - self.warm_end)
            lr, momentum = (self.peak, self.end), (0.85, 0.95)
        self.opt.lr = _cos(*lr, pct)
        if self.cycle_momentum:
            self.opt.momentum = _cos(*momentum, pct)  # type: ignore[attr-defined]


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def make_optimizer(
    config: TrainConfig, params: Iterable[torch.nn.Parameter], steps_per_epoch: int
) -> tuple[Optimizer, Schedule | None]:
    """The optimiser and schedule (None: a constant rate) a config asks for."""
    opt: Optimizer
    if config.optimizer == "sgd":
        opt = SGD(params, config.lr, config.momentum, config.weight_decay)
    elif config.optimizer == "adam":
        opt = Adam(params, config.lr, config.weight_decay)
    else:
        opt = Adadelta(params, config.lr, config.weight_decay)
    if config.scheduler == "none":
        return opt, None
    per_batch = config.scheduler != "step"
    return opt, Schedule(config.scheduler, opt, config.epochs * steps_per_epoch, per_batch)
