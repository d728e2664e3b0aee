"""Where a function would make the host wait for a GPU, found on a machine without one.

On a fast GPU a small model's training step is bound by the host launching kernels: the host must stay ahead,
queueing the next kernels while the GPU runs the last ones. It has to stop and wait whenever it needs a value
the GPU computes (`.item()`, `int(t)`, an op whose output size depends on the data, such as `bincount`), and
whenever it copies a tensor from host memory to the GPU (such a copy first waits for the GPU to finish all it
was given). Traced with fake CUDA tensors (PyTorch's FakeTensorMode: shapes, dtypes and devices, no data, no
GPU), every such place shows up as an operation, and `host_waits` names them.
"""
from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def fake_cuda():
    """Inside: tensors created with device="cuda" are fake CUDA tensors. Skips where PyTorch cannot fake them."""
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
    with fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        try:
            torch.empty(1, device="cuda")
        except (RuntimeError, AssertionError) as err:  # a torch whose fake tensors need a real CUDA
            pytest.skip(f"no fake CUDA tensors here: {err}")
        yield


def host_waits(fn, *args, **kwargs) -> list[str]:
    """Call `fn` on fake CUDA arguments (made inside `fake_cuda()`) and list what would make the host wait."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    waits = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            on_host = [t for t in tensors if t.device.type == "cpu"]
            to_gpu = str(kwargs.get("device", "")).startswith("cuda") or any(t.device.type == "cuda" for t in tensors)
            # a 0-dim host tensor beside GPU tensors is passed to the kernel as a number, not copied
            if to_gpu and any(t.dim() > 0 or func.__name__.startswith(("_to_copy", "copy_")) for t in on_host):
                waits.append(f"{func}: a tensor copied from host memory to the GPU")
            return func(*args, **kwargs)

    with Watch():
        try:
            fn(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as err:
            waits.append(f"{err.func}: reads a value computed on the GPU")
    return waits
