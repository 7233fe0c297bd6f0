"""CUDA device placement of tailor, the attacks and the explainers (run by benchmarks/gpu_check.sh).

Every test here needs CUDA; without it the module is skipped with that reason (the only skip
in the suite). What they check: results land on the requested device, bf16 paths agree with
float32 (tailoring step, one-pixel search, Gauss head under autocast), channels-last keeps
the features, and the fast LRP engine gives zennit's relevance on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/gpu_check.sh on a GPU)"),
]

CUDA = torch.device("cuda")


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from kmtools.data import load_dataset
    from kmtools.features import as_tensors

    pair = as_tensors(load_dataset("digits", split="test").dataset)
    assert pair is not None
    return pair[0].float(), pair[1].long()


def _model():  # type: ignore[no-untyped-def]
    from tests.helpers import digits_model

    return digits_model(epochs=3).eval()


def test_tailor_bf16_on_cuda_gives_a_finite_gauss_network_on_the_device() -> None:
    from kmtools.data import load_dataset
    from kmtools.tailor import TailorConfig, tailor

    tr = load_dataset("digits", split="train")
    te = load_dataset("digits", split="test")
    res = tailor(_model(), tr.dataset, TailorConfig(epochs=1, amp=True), val_data=te.dataset, device=CUDA)
    rows = [h for h in res.history if h.epoch >= 1]
    assert rows and all(h.loss is not None and torch.isfinite(torch.tensor(h.loss)) for h in rows)
    assert res.model is not None
    x, y = _digits()
    m = res.model.to(CUDA)
    assert next(m.parameters()).device.type == "cuda"
    with torch.no_grad():
        acc = (m(x.to(CUDA)).argmax(1).cpu() == y).float().mean()
    assert acc > 0.5


def test_onepixel_bf16_search_successes_fool_in_float32() -> None:
    from kmtools.attacks.onepixel import onepixel
    from kmtools.models.scoring import class_log_confidences

    model = _model().to(CUDA)
    x, y = _digits()
    x, y = x[:40], y[:40]
    kw = dict(popsize=60, maxiter=20, seed=0, device=CUDA)
    bf16 = onepixel(model, x.to(CUDA), y, amp=True, **kw)  # type: ignore[arg-type]
    f32 = onepixel(model, x.to(CUDA), y, amp=False, **kw)  # type: ignore[arg-type]
    assert bf16.x_adv.device.type == "cuda" and bf16.settings["amp"] is True
    logc = class_log_confidences(model, bf16.x_adv.float())  # float32 eager
    fooled = bf16.success & ~bf16.skipped
    assert torch.equal(logc.argmax(1).cpu()[fooled], bf16.adv_labels[fooled])
    assert bool((logc.argmax(1).cpu()[fooled] != y[fooled]).all())
    d = f32.to_dict()
    assert d["rate_lo"] - 0.15 <= bf16.rate <= d["rate_hi"] + 0.15  # within the float32 run's interval (+ slack)


def test_channels_last_keeps_the_features_and_gauss_head_is_float32_under_autocast() -> None:
    from kmtools.models.core import GaussHead, KmModel
    from kmtools.models.scoring import class_log_confidences

    model = _model().to(CUDA)
    x = _digits()[0][:64].to(CUDA)
    with torch.no_grad():
        ref = model.features(x)
        cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        out = cl.features(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    gauss = KmModel(model.backbone, GaussHead(ref[:10].float().clone()), model.normalize).to(CUDA).eval()
    amp = class_log_confidences(gauss, x, amp=True)
    f32 = class_log_confidences(gauss, x, amp=False)
    assert amp.dtype == torch.float32
    assert (amp.argmax(1) == f32.argmax(1)).float().mean() > 0.9


def test_fast_lrp_on_cuda_matches_zennit_and_the_cpu() -> None:
    pytest.importorskip("zennit")
    from kmtools.explain import DeepNeonExplainer
    from kmtools.models import zoo
    from kmtools.models.core import KmModel, Normalize, split

    torch.manual_seed(0)
    net = zoo.create("resnet10", width=8).eval()
    x = torch.rand(8, 3, 32, 32)
    backbone, head, _ = split(net, x[:2])
    model = KmModel(backbone, head, Normalize([0.5] * 3, [0.25] * 3)).eval()
    with torch.no_grad():
        mu = model.features(x)[:4].clone() + 0.01
    rel = {}
    for dev in ("cpu", "cuda"):
        for eng in ("fast", "zennit"):
            ex = DeepNeonExplainer(model, mu, engine=eng, device=dev)
            out = ex.explain(x.to(dev), beta=1.0).relevance
            assert out.device.type == dev and ex.engine_used == eng
            rel[(dev, eng)] = out.double().cpu()
    ref = rel[("cpu", "zennit")]
    for k, v in rel.items():
        assert float((v - ref).abs().max() / ref.abs().max()) < 1e-2, k


def test_scorers_on_cuda() -> None:
    from kmtools.models.scoring import class_log_confidences
    from kmtools.scoring_backends import build_scorer, resolve_backend

    assert resolve_backend("auto", CUDA) == "eager"
    model = _model().to(CUDA)
    x = _digits()[0][:256].to(CUDA)
    ref = class_log_confidences(model, x)
    for b in ("eager", "channels-last"):
        out = build_scorer(model, b, device=CUDA)(x)
        assert out.device.type == "cuda" and torch.allclose(out, ref, atol=1e-4)


def test_ddp_nccl_world_size_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.fail("this CUDA build has no NCCL")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        t = torch.ones(3, device=CUDA)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]
        lin = nn.parallel.DistributedDataParallel(nn.Linear(4, 2).to(CUDA), device_ids=[0])
        lin(torch.rand(5, 4, device=CUDA)).sum().backward()
    finally:
        dist.destroy_process_group()
