"""Per-kernel times of the 1D layer's forward+backward (torch.profiler), bench case."""
import torch
from torch.profiler import ProfilerActivity, profile

from lmKAN import KANLayer

torch.manual_seed(0)
layer = KANLayer(256, 256, "random_normal").cuda()
x = (1.5 * torch.randn(65536, 256, device="cuda")).requires_grad_(True)
gy = torch.randn(65536, 256, device="cuda")
for _ in range(3):
    layer(x).backward(gy)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        layer(x).backward(gy)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
