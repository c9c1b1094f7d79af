"""A tensor op and a backward pass on the CPU, checked against a known answer."""

import torch

torch.manual_seed(0)
a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
b = torch.ones(3, 2)
assert torch.equal(a @ b, torch.tensor([[3.0, 3.0], [12.0, 12.0]])), a @ b
w = torch.randn(3, requires_grad=True)
(a @ w).sum().backward()
assert w.grad is not None and torch.allclose(w.grad, torch.tensor([3.0, 5.0, 7.0])), w.grad
print("cpu matmul and autograd: ok")
