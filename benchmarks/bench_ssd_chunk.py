"""Which SSD chunk size the Mamba2 block should use on the CPU, per sequence length and dtype.

    python benchmarks/bench_ssd_chunk.py [--chunks 16 32 64 128] [--rounds 5]
    python benchmarks/bench_ssd_chunk.py --smoke

Forward+backward of one `Mamba2` block (width 64, d_state 32, headdim 64, as `rtgen bench ssm`
runs it; batch 8 at 1,024 tokens, batch 1 beyond), in float32 and under bfloat16 autocast (how
`train.cpu_amp` trains on the CPU), every chunk size of a (length, dtype) cell alternating round
after round so that a slow minute hits all of them; the median per cell, and each cell's fastest
chunk against the block's default (`rtgen.ssm.mamba2.CPU_CHUNK`).
"""

from __future__ import annotations

import argparse
import statistics
import time

if __name__ == "__main__":
    from rtgen.core.runtime import configure_cpu_runtime

    configure_cpu_runtime()  # as the `rtgen` command does, before PyTorch loads

import torch  # noqa: E402

from rtgen.bench.ssm import machine_description  # noqa: E402
from rtgen.ssm import Mamba2  # noqa: E402
from rtgen.ssm.mamba2 import CPU_CHUNK  # noqa: E402

SHAPES = [(8, 1024), (1, 4096), (1, 16384), (1, 65536)]  # (batch, tokens)


def step(block: Mamba2, x: torch.Tensor, bf16: bool) -> float:
    block.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = block(x)
    y.float().sum().backward()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="seconds: batch 1 x 256 tokens, chunks 16 and 32, one round")
    a = ap.parse_args(argv)
    shapes = [(1, 256)] if a.smoke else SHAPES
    if a.smoke:
        a.chunks, a.rounds = [16, 32], 1
    print(f"machine: {machine_description('cpu')}")
    print(f"Mamba2 block, width {a.width}, d_state 32, headdim 64, forward+backward, median of {a.rounds} "
          f"alternating rounds; default CPU chunk {CPU_CHUNK}")
    torch.manual_seed(0)
    print(f"{'batch x L':>12} {'dtype':>6} " + "".join(f"{'chunk ' + str(c):>11}" for c in a.chunks) + "   fastest")
    for b, L in shapes:
        x = torch.randn(b, L, a.width)
        for bf16 in (False, True):
            blocks = {c: Mamba2(a.width, d_state=32, headdim=64, chunk_size=c) for c in a.chunks}
            state = blocks[a.chunks[0]].state_dict()
            for blk in blocks.values():
                blk.load_state_dict(state)
                step(blk, x, bf16)  # warm-up
            times = {c: [] for c in a.chunks}
            for _ in range(a.rounds):
                for c, blk in blocks.items():
                    times[c].append(step(blk, x, bf16))
            med = {c: statistics.median(v) * 1000 for c, v in times.items()}
            best = min(med, key=med.get)
            vs = med.get(CPU_CHUNK)
            note = str(best) if best == CPU_CHUNK or not vs else f"{best} ({vs / med[best]:.2f}x faster than the default)"
            print(f"{b:>5} x {L:>5} {'bf16' if bf16 else 'fp32':>6} " + "".join(f"{med[c]:>9.1f}ms" for c in a.chunks)
                  + f"   {note}", flush=True)


if __name__ == "__main__":
    main()
