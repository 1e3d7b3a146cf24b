"""`train.compile`: the backbone traces as one graph, and compiled steps equal eager ones.

The equality tests compile with backend="aot_eager": the same graph capture and autograd as
inductor (dynamo tracing, AOT forward/backward split, min-cut recompute) without C++ code
generation, which takes minutes on a small CPU; inductor itself runs in benchmarks/ssl_step.py.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from cellfm.models.vision_transformer import VisionTransformer
from cellfm.ssl.compile import compile_backbones
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.meta_arch import SSLMetaArch

from .test_ssl_distributed import WEIGHT_ATOL, _max_diff, _run, batches  # noqa: F401 - fixture
from .test_ssl_train import TINY

# Drop path above the subset threshold: the randperm-based stochastic depth is traced too.
CFG = TINY + ["model.drop_path_rate=0.3", "teacher.momentum_teacher=0.9"]


def _vit(depth: int) -> VisionTransformer:
    vit = VisionTransformer(
        embed_dim=64, depth=depth, num_heads=4, patch_size=8, img_size=32, in_chans=1, drop_path_rate=0.3
    )
    return vit.train()


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("pack", [True, False])
def test_backbone_traces_as_one_graph_without_breaks(depth, pack):
    """Student (global + local crops, masks, stochastic depth) and teacher calls: one graph each,
    whatever the depth (the fp32 MLP's GELU-recompute Function used to break it at every block)."""
    vit = _vit(depth)
    glob, local = torch.randn(4, 1, 32, 32), torch.randn(8, 1, 16, 16)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[:2, :5] = True

    def student(glob, local):
        a, b = vit([glob, local], [masks, None], is_training=True, pack=pack)
        return a["x_norm_patchtokens"].sum() + b["x_norm_clstoken"].sum()

    out = torch._dynamo.explain(student)(glob, local)
    assert (out.graph_count, out.graph_break_count) == (1, 0), [b.reason for b in out.break_reasons]
    with torch.no_grad():
        out = torch._dynamo.explain(lambda g: vit(g, is_training=True)["x_norm_clstoken"])(glob)
    assert (out.graph_count, out.graph_break_count) == (1, 0), [b.reason for b in out.break_reasons]


def _batch(seed: int) -> dict:
    from cellfm.transforms import MaskCollator

    g = torch.Generator().manual_seed(seed)
    samples = [
        {
            "global_crops": [torch.randn(1, 32, 32, generator=g) for _ in range(2)],
            "local_crops": [torch.randn(1, 16, 16, generator=g) for _ in range(2)],
        }
        for _ in range(4)
    ]
    return MaskCollator(global_crops_size=32, patch_size=8, seed=seed)(samples)


def _meta(compiled: bool, per_block: bool = False, *extra: str) -> tuple[SSLMetaArch, torch.optim.Optimizer]:
    cfg = load_ssl_config("cpu_tiny", CFG + list(extra))
    torch.manual_seed(0)
    from cellfm.models.config import backbone_from_config

    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    if compiled:
        compile_backbones(meta, per_block=per_block, backend="aot_eager")
    meta.train()
    meta.teacher.eval()
    opt = torch.optim.AdamW([p for p in meta.student.parameters() if p.requires_grad], lr=1e-3)
    return meta, opt


def _steps(meta: SSLMetaArch, opt: torch.optim.Optimizer, n: int = 2) -> tuple[list[dict], dict]:
    torch.manual_seed(1)  # the same stochastic-depth draws for both runs
    logs, grads = [], {}
    for step in range(n):
        opt.zero_grad(set_to_none=True)
        logs.append({k: v.item() for k, v in meta.forward_backward(_batch(step), 0.05).items()})
        grads = {k: p.grad.clone() for k, p in meta.student.named_parameters() if p.grad is not None}
        opt.step()
        meta.update_teacher(0.9)
    return logs, grads


@pytest.mark.parametrize("per_block", [False, True])
def test_compiled_steps_give_the_eager_losses_and_gradients(per_block):
    eager_logs, eager_grads = _steps(*_meta(False))
    torch._dynamo.reset()
    counters.clear()
    logs, grads = _steps(*_meta(True, per_block))
    # the compiled code really ran: whole backbones give one graph per call (student, teacher) and
    # no recompile on the second step; per block, the blocks' graphs
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2 if not per_block else graphs >= 2, dict(counters["stats"])
    assert eager_logs[0]["loss"] != eager_logs[1]["loss"]  # the second step sees moved weights
    for e, c in zip(eager_logs, logs):
        assert c == pytest.approx(e, rel=1e-5, abs=1e-6)
    assert grads.keys() == eager_grads.keys() and len(grads) > 20
    for k, g in eager_grads.items():
        # fp32 tolerance relative to the tensor's largest gradient: elementwise atol 1e-6 failed on one
        # thread (1.4e-6 on the patch embedding, reduction order), for the compiled and eager code alike
        err, scale = (grads[k] - g).abs().max().item(), g.abs().max().item()
        assert err <= 1e-4 * scale + 1e-7, f"{k}: {err:.3g} (largest gradient {scale:.3g})"


def test_pretrain_with_compile_keeps_checkpoint_and_export_keys(tmp_path):
    """`train.compile=true` end to end: same state-dict keys as eager, loadable exports."""
    import cellfm
    from cellfm.data.samples import write_sample_plate
    from cellfm.ssl.train import Trainer

    plate = write_sample_plate(tmp_path / "samples.ome.zarr")
    cfg = load_ssl_config("cpu_tiny", TINY + ["train.compile=true", "train.compile_backend=aot_eager"])
    trainer = Trainer(cfg, [plate], tmp_path / "run")
    eager_keys = set(SSLMetaArch(cfg, trainer._export_copy).state_dict())
    row = trainer.train(steps=2)
    assert row["step"] == 1 and row["loss"] > 0
    assert set(trainer.meta.state_dict()) == eager_keys
    # on CPU each block compiles on its own (a whole ViT-S/14 student stalls inductor's lowering)
    blocks = trainer.meta.student["backbone"].blocks
    assert all(hasattr(b.forward, "_torchdynamo_orig_callable") for b in blocks), type(blocks[0].forward)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(state["meta"]) == eager_keys
    exported = cellfm.load_backbone(tmp_path / "run" / "backbone.safetensors")
    assert exported.arch.depth == 2


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_compiled_two_processes_match_one_eager(batches, tmp_path, mode):  # noqa: F811 - fixture
    """Compiled under DDP (whole backbone) and FSDP2 (per block, hooks outside the graphs): two
    processes end where one eager process with the whole batch ends."""
    single = _run(batches, tmp_path / "one" / "state.pt", 1, mode)
    compiled = "train.compile=true;train.compile_backend=aot_eager"
    double = _run(batches, tmp_path / "two" / "state.pt", 2, mode, extra=compiled)
    assert single["loss"] == pytest.approx(double["loss"], rel=1e-4)
    for part in ("student", "teacher"):
        diff, key = _max_diff(single[part], double[part])
        assert diff < WEIGHT_ATOL, f"{part} {key} differs by {diff:.3g}"


def test_compiled_mlp_saves_the_fc1_output_not_the_gelu_output():
    """The compiled graph keeps the eager path's saving (GELU recomputed in backward): of the
    4D-wide activations only fc1's output is kept for backward (left to itself, the min-cut
    partitioner keeps the GELU output too)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from cellfm.models.layers import Mlp

    saved: list[tuple[int, ...]] = []

    def forward_compiler(gm, _inputs):
        (outputs,) = [n.args[0] for n in gm.graph.nodes if n.op == "output"]
        saved.extend(tuple(o.meta["val"].shape) for o in outputs[1:] if hasattr(o, "meta"))
        return gm

    backend = aot_autograd(
        fw_compiler=forward_compiler,
        bw_compiler=lambda gm, _inputs: gm,
        partition_fn=min_cut_rematerialization_partition,
    )
    torch.manual_seed(0)
    mlp, x = Mlp(64, 256), torch.randn(8, 17, 64, requires_grad=True)
    torch._dynamo.reset()
    out = torch.compile(mlp, backend=backend)(x)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (x, mlp.fc1.weight, mlp.fc2.weight)]
    assert [s for s in saved if 256 in s and 64 not in s] == [(136, 256)], saved
    for t in (x, *mlp.parameters()):
        t.grad = None
    mlp.fc2(mlp.act(mlp.fc1(x))).square().sum().backward()
    for g, t in zip(grads, (x, mlp.fc1.weight, mlp.fc2.weight)):
        assert torch.allclose(g, t.grad, rtol=1e-5, atol=1e-6)
