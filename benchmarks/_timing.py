"""The CUDA-event timer shared by the benchmark scripts, CUDA-graph capture, a GPU warm-up."""
import statistics
import time

import torch


def cuda_median_ms(fn, reps, warmup=3, calls_per_sample=1, sync_each=True):
    """Median milliseconds per call of fn(), with CUDA events around each sample.

    warmup: untimed calls first. calls_per_sample: calls back to back inside one sample
    (their launches overlap, as in a training loop; the result is per call).
    sync_each: wait for each sample before starting the next (False: samples run back to
    back too, so host-side cost between calls shows, as for an eager user).
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls_per_sample):
            fn()
        end.record()
        if sync_each:
            end.synchronize()
        samples.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) / calls_per_sample for s, e in samples)


def wall_us_per_call(fn, calls, samples, warmup, sync=None):
    """Median over `samples` of the wall-clock microseconds per call of `calls` back-to-back
    fn() calls, after `warmup` calls: host cost as an eager user sees it. sync: called
    before each clock read (torch.cuda.synchronize to include the GPU work; None: host only).
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def cuda_graph_replay(step, warmup=3):
    """Capture step() in a CUDA graph (after `warmup` calls on a side stream, as capture
    requires); returns the graph's replay function: the same GPU work without host cost."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def peak_memory_gb(step, clear=()):
    """(peak, peak above the memory allocated before) in GB over one step(), after setting
    the .grad of each tensor in `clear` to None (so that gradients of earlier calls neither
    count nor get accumulated into)."""
    for t in clear:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak / 1e9, (peak - base) / 1e9


def warm_up_gpu(seconds=1.0):
    """Keep the GPU busy for `seconds` (float32 matmuls) before the first timing.

    An idle GPU runs at a low clock and takes a moment under load to reach its boost clock;
    without this the first rows a script measures can come out a few percent (the 1D
    forward: ~8%) slower than the same call measured later in the same process.
    """
    if not torch.cuda.is_available():
        return
    a = torch.randn(4096, 4096, device="cuda")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a = torch.mm(a, a).mul_(1e-4)
        torch.cuda.synchronize()
