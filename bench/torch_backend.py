"""PyTorch CPU as a kern backend: the peer every benchmark measures against.

It runs the very same network graph as kern (nets.Network drives it), with batchnorm folded
into the convolutions and channels-last tensors, as a PyTorch user would deploy it. Test and
benchmark use only: kern never imports torch at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kern.params import fold_batchnorm, maxpool_output_size


@dataclass(frozen=True)
class TorchConv:
    weights: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int
    groups: int
    activation: str


@dataclass(frozen=True)
class TorchConnected:
    weights: torch.Tensor
    bias: torch.Tensor
    activation: str


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "leaky":
        return F.leaky_relu(x, 0.1)
    if activation == "relu":
        return F.relu(x)
    if activation == "logistic":
        return torch.sigmoid(x)
    if activation == "tanh":
        return torch.tanh(x)
    return x


class TorchBackend:
    name = "torch"

    def __init__(self, threads: int = 1, device: str = "cpu") -> None:
        """threads: CPU threads; device 'cuda' runs cuDNN, with TF32 off (float32 results)."""
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.device = torch.device(device)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return self._tensor(x).to(memory_format=torch.channels_last)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.contiguous().cpu().numpy()

    def prepare_conv(self, weights, bias, bn, *, stride, padding, groups, activation) -> TorchConv:
        w, b = fold_batchnorm(weights, bias, bn)
        w = self._tensor(w).to(memory_format=torch.channels_last)
        return TorchConv(w, self._tensor(b), stride, padding, groups, activation)

    def conv2d(self, x, c: TorchConv):
        with torch.inference_mode():
            y = F.conv2d(x, c.weights, c.bias, c.stride, c.padding, 1, c.groups)
            return _activate(y, c.activation)

    def conv2d_residual(self, x, c: TorchConv, residual, *, activation):
        with torch.inference_mode():
            return _activate(self.conv2d(x, c) + residual, activation)

    def prepare_connected(self, weights, bias, bn, *, activation) -> TorchConnected:
        w, b = fold_batchnorm(weights, bias, bn)
        return TorchConnected(self._tensor(w), self._tensor(b), activation)

    def connected(self, x, fc: TorchConnected):
        with torch.inference_mode():
            y = _activate(F.linear(x.contiguous().flatten(1), fc.weights, fc.bias), fc.activation)
            return y[:, :, None, None]

    def maxpool(self, x, *, size, stride, padding):
        with torch.inference_mode():
            out_h = maxpool_output_size(x.shape[2], size, stride, padding)
            out_w = maxpool_output_size(x.shape[3], size, stride, padding)
            before = padding // 2
            after_h = max(0, (out_h - 1) * stride + size - before - x.shape[2])
            after_w = max(0, (out_w - 1) * stride + size - before - x.shape[3])
            if before or after_h or after_w:
                x = F.pad(x, (before, after_w, before, after_h), value=float("-inf"))
            return F.max_pool2d(x, size, stride)[:, :, :out_h, :out_w]

    def avgpool(self, x):
        with torch.inference_mode():
            return x.mean(dim=(2, 3), keepdim=True)

    def softmax(self, x, *, groups, temperature):
        with torch.inference_mode():
            flat = x.contiguous().reshape(x.shape[0], groups, -1) / temperature
            return torch.softmax(flat, dim=2).reshape(x.shape)

    def shortcut(self, x, source, *, alpha, beta, activation):
        with torch.inference_mode():
            if x.shape == source.shape:
                return _activate(alpha * x + beta * source, activation)
            # Darknet's rule for different shapes (kern/ref/elementwise.py): the common part.
            _, c_out, h_out, w_out = x.shape
            _, c_src, h_src, w_src = source.shape
            stride, sample = max(w_src // w_out, 1), max(w_out // w_src, 1)
            c, h, w = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
            out = x.clone()
            part = out[:, :c, : h * sample : sample, : w * sample : sample]
            part.copy_(alpha * part + beta * source[:, :c, : h * stride : stride, : w * stride : stride])
            return _activate(out, activation)

    def route(self, xs: Sequence[torch.Tensor]):
        with torch.inference_mode():
            return torch.cat(list(xs), dim=1)

    def crop(self, x, *, height, width, scale, shift):
        top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
        return x[:, :, top : top + height, left : left + width] * scale + shift

    def activate(self, x, activation):
        with torch.inference_mode():
            return _activate(x, activation)

    # ---- per-channel ops (Caffe's networks; kern/ref/channels.py)
    def prepare_affine(self, scale, bias, *, activation, slope=None):
        shape = (1, -1, 1, 1)
        slope = None if slope is None else self._tensor(slope).reshape(shape)
        return self._tensor(scale).reshape(shape), self._tensor(bias).reshape(shape), slope, activation

    def affine(self, x, a):
        scale, bias, slope, activation = a
        with torch.inference_mode():
            v = x * scale + bias
            return _activate(v if slope is None else torch.where(v > 0, v, v * slope), activation)

    def pool_window(self, x, *, method, kernel, stride, pad, out_size):
        from kern.ref.channels import pool_window  # Caffe's divisor rule: no PyTorch op has it

        return self._tensor(pool_window(x.cpu().numpy(), method, kernel, stride, pad, out_size))

    def combine(self, x, other, *, operation):
        with torch.inference_mode():
            return torch.maximum(x, other) if operation == "max" else x * other

    def scale_channels(self, x, factors, add=None):
        with torch.inference_mode():
            y = x * factors.reshape(x.shape[0], x.shape[1], 1, 1)
            return y if add is None else y + add

    def lrn(self, x, *, size, alpha, beta, k):
        with torch.inference_mode():
            return F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)

    def slice_channels(self, x, *, first, count):
        return x[:, first : first + count]
