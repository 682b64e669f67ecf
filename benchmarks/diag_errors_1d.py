import torch, lmKAN
x = torch.randn(4, 8, device='cuda')
p = torch.randn(4, 4, 4, device='cuda')
for name, args in [("wrong n_in", (torch.randn(5, 8, device='cuda'), p, torch.linspace(-2,2,4,device='cuda'), True, True)),
                   ("big G", (x, torch.randn(4001, 4, 4, device='cuda'), torch.linspace(-2, 2, 4001, device='cuda'), True, True))]:
    try:
        torch.ops.lmkan.lmkan1d_forward(*args); print(name, "no error")
    except Exception as e:
        print(name, type(e).__name__, str(e)[:200], flush=True)
