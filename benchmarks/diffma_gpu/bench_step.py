"""One training step (loss, backward, AdamW) of DiffMa-B and the CPU-size DiffMa, batch 32, bf16
autocast, on the PyTorch scan path and on the chunked matmul scan, alternating: ms per step."""
import os, sys, time, numpy as np, torch
from rtgen.engine.config import load_config
from rtgen.ssm.dispatch import use_backend
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
z = np.load(os.environ.get("LATENTS", "local/gpu/latents.npz"))
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
print(torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch.__version__, flush=True)
for name in ("b", "s"):
    task = load_config(f"benchmarks/diffma_gpu/{name}.yaml", ["latent.shift=0.03", "latent.scale=1.27"]).task
    torch.manual_seed(0)
    model = task.build_model().to(dev)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {k: torch.from_numpy(z[k][:32].astype(np.float32)).to(dev) for k in ("x0", "ct")}
    times = {"torch": [], "chunked": []}
    for rnd in range(2):
        for backend in ("torch", "chunked"):
            model.load_state_dict(state)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
            with use_backend(backend):
                torch.manual_seed(1)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    first = float(task.loss(model, batch).detach())
                for i in range(steps + 3):
                    if i == 3:
                        torch.cuda.synchronize() if dev.type == "cuda" else None
                        t0 = time.perf_counter()
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                        loss = task.loss(model, batch)
                    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
                torch.cuda.synchronize() if dev.type == "cuda" else None
            times[backend].append((time.perf_counter() - t0) / steps * 1000)
            print(f"{name} round {rnd} {backend:8s} first loss {first:.6f}  {times[backend][-1]:.1f} ms/step", flush=True)
    print(f"{name}: torch {min(times['torch']):.1f} ms/step, chunked {min(times['chunked']):.1f} ms/step, "
          f"ratio {min(times['torch']) / min(times['chunked']):.1f}x", flush=True)
