"""Correctness checks on a CUDA device, run before the GPU benchmarks (needs only torch, cellfm, dinov2).

1. cellfm ViT-S/14 vs the official DINOv2 module with the same weights, fp32 (TF32 off): max abs diff.
2. One SSL step with all crops packed vs forwarded separately (fp32, no drop path): losses and
   gradients agree.
3. A few bf16-autocast SSL steps: every loss finite.

    python benchmarks/gpu_check.py          # prints a table, saves results/gpu_check.json
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save, table  # noqa: E402
from ssl_step import make_batch  # noqa: E402


def parity_with_official(device: str) -> float:
    from dinov2.models import vision_transformer as vits

    import cellfm

    torch.manual_seed(1)
    official = vits.vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0)
    buf = io.BytesIO()
    torch.save(official.state_dict(), buf)
    path = Path("/tmp/cellfm_gpu_check_vits14.pth")
    path.write_bytes(buf.getvalue())
    ours = cellfm.load_backbone(path).to(device).eval()
    official = official.to(device).eval()
    x = torch.randn(4, 3, 224, 224, device=device)
    with torch.no_grad():
        ref, got = official.forward_features(x), ours.forward_features(x)
    return max((ref[k] - got[k]).abs().max().item() for k in ("x_norm_clstoken", "x_norm_patchtokens"))


def _meta(device: str, pack: bool, precision: str = "fp32"):
    from cellfm.models.config import backbone_from_config
    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.meta_arch import SSLMetaArch

    cfg = load_ssl_config(
        "default",
        [
            "model.size=small",
            "model.patch_size=14",
            "model.img_size=112",
            "model.in_chans=3",
            "model.depth=4",
            "model.drop_path_rate=0.0",
            "augment.crops.global_crops_size=112",
            "augment.crops.local_crops_size=42",
            "dino.head.n_prototypes=4096",
            "ibot.head.n_prototypes=4096",
            f"train.pack_crops={str(pack).lower()}",
            f"train.precision={precision}",
        ],
    )
    torch.manual_seed(0)
    return SSLMetaArch(cfg, backbone_from_config(cfg.model)).to(device)


def packed_vs_separate(device: str) -> tuple[float, float]:
    s = dict(batch=4, g=112, l=42, n_local=4)
    batch = make_batch(s, device)
    results = []
    for pack in (True, False):
        meta = _meta(device, pack)
        meta.train()
        logs = meta.forward_backward(batch, 0.07)
        grads = torch.cat([p.grad.flatten() for p in meta.student.parameters() if p.grad is not None])
        results.append((logs["loss"].item(), grads))
    loss_diff = abs(results[0][0] - results[1][0])
    grad_diff = ((results[0][1] - results[1][1]).norm() / results[1][1].norm()).item()
    return loss_diff, grad_diff


def bf16_steps(device: str, n: int = 5) -> list[float]:
    s = dict(batch=4, g=112, l=42, n_local=4)
    batch = make_batch(s, device)
    meta = _meta(device, True, "bf16")
    opt = torch.optim.AdamW([p for p in meta.student.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(n):
        meta.train()
        opt.zero_grad(set_to_none=True)
        losses.append(meta.forward_backward(batch, 0.07)["loss"].item())
        opt.step()
        meta.update_teacher(0.99)
    return losses


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda"
    parity = parity_with_official(device)
    loss_diff, grad_diff = packed_vs_separate(device)
    losses = bf16_steps(device)
    finite = all(torch.isfinite(torch.tensor(losses)))
    rows = [
        {"check": "ViT-S/14 vs official, max abs diff (fp32)", "value": parity, "ok": parity < 1e-4},
        {"check": "packed vs separate step, loss abs diff", "value": loss_diff, "ok": loss_diff < 1e-4},
        {"check": "packed vs separate step, grad rel diff", "value": grad_diff, "ok": grad_diff < 1e-3},
        {"check": f"bf16 steps finite (last loss {losses[-1]:.3f})", "value": float(finite), "ok": finite},
    ]
    print(table(rows, ["check", "value", "ok"]))
    print(f"saved {save('gpu_check', {'machine': machine(), 'rows': rows, 'bf16_losses': losses}, False)}")
    if not all(r["ok"] for r in rows):
        sys.exit("a GPU check failed")


if __name__ == "__main__":
    main()
