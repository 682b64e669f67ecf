"""Temporary: where the small 2D case's eager fwd+bwd step spends host time."""
import torch
from torch.profiler import ProfilerActivity, profile

from lmKAN import ops
from lmKAN.grids import cdf_borders
from _timing import cuda_median_ms, warm_up_gpu

warm_up_gpu()
G, n_in, n_out, batch = 26, 128, 128, 1024
params = (torch.rand(G + 1, G + 1, n_out, n_in // 2, device="cuda") - 0.5).requires_grad_(True)
borders = cdf_borders(G, device="cuda")
x = (torch.randn(n_in, batch, device="cuda") * 1.5).requires_grad_(True)
gy = torch.randn(n_out, batch, device="cuda")
for tile_b, block_b, fast in ((8, 256, False), (4, 512, False), (16, 512, True)):
    def step():
        y = ops.lmkan2d(x, params, borders, True, 8, 512, tile_b, block_b, fast)
        x.grad = params.grad = None
        y.backward(gy)
    one = cuda_median_ms(step, 50, 10)
    loop = cuda_median_ms(step, 15, 5, calls_per_sample=20)
    print(f"tile {tile_b} block {block_b} fast {fast}: one step {one:.3f} ms, back to back {loop:.3f} ms/step")
lin = torch.nn.Linear(n_in, n_out, bias=False, device="cuda")
xf = torch.randn(batch, n_in, device="cuda", requires_grad=True)
gyf = torch.randn(batch, n_out, device="cuda")
def lstep():
    xf.grad = lin.weight.grad = None
    lin(xf).backward(gyf)
print(f"nn.Linear: one step {cuda_median_ms(lstep, 50, 10):.3f} ms, back to back "
      f"{cuda_median_ms(lstep, 15, 5, calls_per_sample=20):.3f} ms/step")
def step():
    y = ops.lmkan2d(x, params, borders, True, 8, 512, 8, 256, False)
    x.grad = params.grad = None
    y.backward(gy)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
