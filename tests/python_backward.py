"""`Tensor.backward()` walked in Python over the autograd graph, node by node: for fake CUDA
tensors on a machine without a GPU (tests/test_fake_cuda.py), where torch's C++ engine wants
a real CUDA context. It does what that engine does to each gradient (validate_outputs): sums
a broadcast input's gradient back to its shape, casts it to its dtype, and refuses one on
another device. Hooks are not run (one process, no DistributedDataParallel).
"""

from collections import defaultdict

import torch


def conform(grad: torch.Tensor, meta) -> torch.Tensor:
    """A node's output gradient made fit for the input it is for (meta: its shape, dtype, device)."""
    if grad.device != meta.device:
        raise RuntimeError(f"a gradient on {grad.device} for an input on {meta.device}: not the same device")
    if tuple(grad.shape) != tuple(meta.shape):
        grad = grad.sum_to_size(meta.shape)
    return grad.to(meta.dtype) if grad.dtype != meta.dtype else grad


def dependencies(root) -> dict:
    """How many edges lead into each node of the graph below `root`."""
    counts, seen, stack = defaultdict(int), {root}, [root]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None:
                counts[child] += 1
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
    return counts


def call(node, grads_in: dict) -> tuple:
    """The node's backward on the gradients of its outputs (zeros for those that got none)."""
    metas = node._input_metadata
    if not grads_in:
        return (None,) * len(node.next_functions)
    args = [grads_in.get(i) for i in range(len(metas))]
    args = [torch.zeros(m.shape, dtype=m.dtype, device=m.device) if a is None else a for a, m in zip(args, metas)]  # noqa: B905
    out = node(*args)
    return out if isinstance(out, tuple) else (out,)


def python_backward(root: torch.Tensor) -> None:
    """root.backward() for a scalar root: leaves' .grad accumulate, in topological order."""
    counts, pending = dependencies(root.grad_fn), defaultdict(dict)
    pending[root.grad_fn][0] = torch.ones_like(root)
    ready = [root.grad_fn]
    while ready:
        node = ready.pop()
        grads_in = pending.pop(node, {})
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf
            if 0 in grads_in:
                leaf, grad = node.variable, grads_in[0].detach()
                leaf.grad = grad if leaf.grad is None else leaf.grad + grad
            continue
        for (child, index), grad in zip(node.next_functions, call(node, grads_in), strict=True):
            if child is None:
                continue
            if grad is not None:
                grad = conform(grad, child._input_metadata[index])
                pending[child][index] = grad if index not in pending[child] else pending[child][index] + grad
            counts[child] -= 1
            if counts[child] == 0:
                ready.append(child)
