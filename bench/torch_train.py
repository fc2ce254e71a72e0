"""PyTorch CPU training the same network as kern, from the same cfg and weights: the peer of
bench.train. Standard layers as a PyTorch user writes them (conv2d, batch_norm in training
mode, leaky_relu, max_pool2d, cross_entropy with a sum), channels-last tensors, torch.optim.SGD
with momentum and weight decay on the weights. Benchmark use only: kern never imports torch."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.torch_backend import _activate
from nets.layers import AvgPool, Connected, Convolutional, Cost, Dropout, MaxPool, Route, Shortcut, Softmax


class TorchTrainer:
    def __init__(self, spec, values, solver, threads: int, device: str = "cpu") -> None:
        """device 'cuda': cuDNN, TF32 off (float32 arithmetic, as kern's)."""
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.spec = spec
        self.params: list[dict[str, torch.Tensor]] = []
        decayed, plain = [], []
        for arrays in values:
            tensors = {}
            for name, array in arrays.items():
                tensor = torch.tensor(np.asarray(array, dtype=np.float32), device=device)
                if name == "weights" and tensor.ndim == 4:
                    tensor = tensor.contiguous(memory_format=torch.channels_last)
                if name in ("weights", "biases", "scales"):
                    tensor.requires_grad_(True)
                    (decayed if name == "weights" else plain).append(tensor)
                tensors[name] = tensor
            self.params.append(tensors)
        self.optimizer = torch.optim.SGD(
            [{"params": decayed, "weight_decay": solver.decay}, {"params": plain, "weight_decay": 0.0}],
            lr=solver.learning_rate / solver.batch, momentum=solver.momentum,
        )

    def layer(self, index: int, x: torch.Tensor, outputs: dict[int, torch.Tensor]) -> torch.Tensor:
        layer, p = self.spec.layers[index], self.params[index]
        if isinstance(layer, Convolutional):
            bias = None if layer.batch_normalize else p["biases"]
            y = F.conv2d(x, p["weights"], bias, layer.stride, layer.padding, 1, layer.groups)
            if layer.batch_normalize:
                y = self._batchnorm(y, p)
            return _activate(y, layer.activation)
        if isinstance(layer, Connected):
            y = F.linear(x.flatten(1), p["weights"], None if layer.batch_normalize else p["biases"])
            if layer.batch_normalize:
                y = self._batchnorm(y, p)
            return _activate(y, layer.activation)[:, :, None, None]
        if isinstance(layer, MaxPool):
            before = layer.padding // 2
            padded = F.pad(x, (before, before, before, before), value=-1e30) if before else x
            pooled = F.max_pool2d(padded, layer.size, layer.stride, ceil_mode=True)
            return pooled[..., : layer.out_shape[1], : layer.out_shape[2]]
        if isinstance(layer, AvgPool):
            return x.mean(dim=(2, 3), keepdim=True)
        if isinstance(layer, Shortcut):
            return _activate(layer.alpha * x + layer.beta * outputs[layer.source], layer.activation)
        if isinstance(layer, Route):
            return torch.cat([outputs[i] for i in layer.layers], dim=1)
        if isinstance(layer, Dropout):
            return F.dropout(x, layer.probability, True)
        if isinstance(layer, (Softmax, Cost)):
            return x  # the loss takes the logits
        raise ValueError(f"bench.train has no PyTorch {type(layer).__name__}")

    @staticmethod
    def _batchnorm(y: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        rolling = p["rolling_mean"], p["rolling_variance"]
        return F.batch_norm(y, *rolling, p["scales"], p["biases"], True, 0.01, 1e-5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs: dict[int, torch.Tensor] = {}
        x = images
        for index in range(len(self.spec.layers)):
            x = self.layer(index, x, outputs)
            outputs[index] = x
        return x.flatten(1)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.forward(images), labels, reduction="sum")
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def layer_seconds(self, images: torch.Tensor, repeat: int) -> list[list[float]]:
        """Each layer alone on its real input: median forward seconds, and median seconds of
        its backward (autograd.grad to its input and parameters from a random gradient)."""
        outputs: dict[int, torch.Tensor] = {}
        inputs = []
        x = images
        with torch.no_grad():
            for index in range(len(self.spec.layers)):
                inputs.append(x)
                x = self.layer(index, x, outputs)
                outputs[index] = x
        times = []
        for index, x in enumerate(inputs):
            leaf = x.detach().requires_grad_(index > 0)
            forward, backward = [], []
            for _ in range(repeat + 1):
                start = time.perf_counter()
                y = self.layer(index, leaf, {k: v.detach() for k, v in outputs.items()})
                forward.append(time.perf_counter() - start)
                wanted = [t for t in [leaf, *self.params[index].values()] if t.requires_grad]
                if wanted and y.requires_grad:
                    dy = torch.randn_like(y)
                    start = time.perf_counter()
                    torch.autograd.grad(y, wanted, dy)
                    backward.append(time.perf_counter() - start)
            times.append([float(np.median(forward[1:])), float(np.median(backward[1:])) if backward else 0.0])
        return times
