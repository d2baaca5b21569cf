"""Tiny models and generated data for perfgate's own tests (trained in about a second)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from perfgate import ModelContext, ModelData, TrainConfig, train_classifier


def blobs() -> ModelData:
    """Four well-separated Gaussian blobs in 16 dimensions: a task a small MLP learns perfectly."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(4, 16)).astype(np.float32)
    labels = rng.integers(0, 4, size=600).astype(np.int64)
    inputs = (centers[labels] + rng.normal(0, 0.5, size=(600, 16))).astype(np.float32)
    return ModelData(
        name="blobs",
        eval_inputs=inputs[:200],
        eval_labels=labels[:200],
        train_inputs=inputs[200:],
        train_labels=labels[200:],
        calibration=inputs[200:328],
    )


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_mlp(ctx: ModelContext) -> nn.Module:
    return train_classifier(TinyMLP, ctx, TrainConfig(epochs=5, max_shift=0))


class Broken(nn.Module):
    """Returns NaN: the finite-output gate must fail it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 4), float("nan"))


def nan_model(ctx: ModelContext) -> nn.Module:
    return Broken()


class Slowed(nn.Module):
    """Wraps the tiny MLP and burns extra CPU time per call: a real injected slowdown.

    The delay, in microseconds, comes from PERFGATE_TEST_DELAY_US so one test can time the same
    case with and without it.
    """

    def __init__(self, inner: nn.Module, delay_us: float) -> None:
        super().__init__()
        self.inner = inner
        self.delay_s = delay_us / 1e6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            import time

            end = time.perf_counter() + self.delay_s
            while time.perf_counter() < end:
                pass
        return self.inner(x)


def slowed_mlp(ctx: ModelContext) -> nn.Module:
    return Slowed(tiny_mlp(ctx), float(os.environ.get("PERFGATE_TEST_DELAY_US", "0")))


def damaged_mlp(ctx: ModelContext) -> nn.Module:
    """The tiny MLP, with its weights damaged when PERFGATE_TEST_DAMAGE is set: a model change that
    makes the FP32 model itself worse (every variant still follows its new, worse reference)."""
    model = tiny_mlp(ctx)
    if os.environ.get("PERFGATE_TEST_DAMAGE"):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.abs().mean() * 3)
    return model


class Burst(Slowed):
    """Slow (PERFGATE_TEST_DELAY_US) for the first PERFGATE_TEST_BURST_CALLS calls, then fast: a
    neighbour's burst during the first measurement that the confirmation does not see."""

    def __init__(self, inner: nn.Module, delay_us: float, calls: int) -> None:
        super().__init__(inner, delay_us)
        self.remaining = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.remaining -= 1
        return super().forward(x) if self.remaining >= 0 else self.inner(x)


def burst_mlp(ctx: ModelContext) -> nn.Module:
    delay = float(os.environ.get("PERFGATE_TEST_DELAY_US", "0"))
    return Burst(tiny_mlp(ctx), delay, int(os.environ.get("PERFGATE_TEST_BURST_CALLS", "0")))


def diabetes() -> ModelData:
    """scikit-learn's diabetes regression: targets 25-346, so outputs in the hundreds."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x = ((bunch.data - bunch.data.mean(0)) / bunch.data.std(0)).astype(np.float32)
    y = bunch.target.astype(np.float32)
    return ModelData("diabetes", x[:120], y[:120], x[120:], y[120:], calibration=x[120:248])


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def diabetes_regressor(ctx: ModelContext) -> nn.Module:
    """A small MLP fitted to the diabetes targets (MSE), cached like any trained model."""
    from perfgate.training import fit

    def train(path: object) -> None:
        torch.manual_seed(0)
        model = Regressor()
        with torch.no_grad():
            model.net[2].bias.fill_(float(ctx.data.train_labels.mean()))  # type: ignore[union-attr]
        config = TrainConfig(epochs=60, batch_size=32, lr=1e-2, max_shift=0)
        fit(model, ctx.data.train_inputs, ctx.data.train_labels[:, None], config, ctx.progress, mse_loss)  # type: ignore[index,arg-type]
        torch.save(model.state_dict(), path)  # type: ignore[arg-type]

    hit = ctx.cache.get_or_build("tiny-regressor", ctx.data.fingerprint(), "weights.pt", train)
    model = Regressor()
    model.load_state_dict(torch.load(hit.path, weights_only=True))
    return model.eval()


def mse_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(inputs), targets)


def mse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error: lower is better."""
    return float(np.mean((outputs.reshape(-1) - targets) ** 2))


def neg_mse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """-MSE: higher is better, and always negative."""
    return -mse(outputs, targets)


def blobs_without_splits() -> ModelData:
    """The blobs' eval set alone: nothing to calibrate on but the data it is judged on."""
    data = blobs()
    return ModelData("blobs-eval-only", data.eval_inputs, data.eval_labels)


def seeded_mlp(ctx: ModelContext) -> nn.Module:
    """The tiny MLP's architecture, untrained (seeded): for data with nothing to train on."""
    torch.manual_seed(0)
    return TinyMLP().eval()


def per_sample_error(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """A broken metric: one error per sample (an array), not the one number a metric returns."""
    return np.abs(outputs.reshape(len(outputs), -1)[:, 0] - targets)


class WidenedProbe(nn.Module):
    """The tiny MLP beside a probe matmul of PERFGATE_TEST_PROBE_WIDTH columns whose result adds
    nothing the float32 outputs can show: widening it slows one operator for real, in torch
    (``aten::mm``) and in its ONNX export (the ``/MatMul`` node), and changes no prediction."""

    def __init__(self, inner: nn.Module, width: int) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("probe", torch.full((16, width), 1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = torch.matmul(x, self.probe).mean(-1, keepdim=True)
        return self.inner(x) + probe * 1e-30

    def extra_repr(self) -> str:
        return f"probe width {self.probe.shape[1]}"


def probed_mlp(ctx: ModelContext) -> nn.Module:
    return WidenedProbe(tiny_mlp(ctx), int(os.environ.get("PERFGATE_TEST_PROBE_WIDTH", "64")))


def tiny_mlp_onnx(ctx: ModelContext) -> str:
    """A user's ONNX file (``kind = "onnx"``): the tiny MLP exported once with its own names
    (``features`` -> ``logits``) and a fixed batch of 1, which perfgate renames and frees."""
    path = ctx.cache.root / "user-files" / "tiny_mlp.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        model = tiny_mlp(ctx)
        example = torch.from_numpy(ctx.data.eval_inputs[:1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own deprecation notice
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, input_names=["features"], output_names=["logits"]
            )
    return str(path)
