"""The GPU path, checked on CPU: the static-shape update, no clean labels for targeted UAPs, torch.compile, the
device placement of the engine's workers. Every path here takes the same decisions as the reference one."""

from __future__ import annotations

import pytest
import torch

from raylab.core import (
    UAP, VALID_RANGE, Targeted, Untargeted, batch_update, masked_update, predict_labels, project_lp, random_sphere,
    to_model_space, zeta_radius,
)


@pytest.mark.parametrize("criterion", [Untargeted(), Targeted(0), Targeted(1)], ids=repr)
@pytest.mark.parametrize("clip", [None, VALID_RANGE], ids=["unclipped", "clipped"])
def test_the_static_shape_update_takes_the_same_decisions(trained_cnn, natural_gray, criterion, clip) -> None:
    x = to_model_space(natural_gray[:48])
    clean = predict_labels(trained_cnn, x)
    rho = random_sphere((1, 28, 28), radius=2.0, p=2, generator=torch.Generator().manual_seed(1))
    ref = batch_update(trained_cnn, x, clean, rho, eps=0.05, criterion=criterion, clip=clip)
    got = masked_update(trained_cnn, x, clean, rho, eps=0.05, criterion=criterion, clip=clip)
    assert got.counts.tolist() == [ref.stats.images, ref.stats.active, ref.stats.accepted]
    assert 0 < ref.stats.accepted < ref.stats.active  # some steps kept, some refused: the mask is exercised
    assert got.accepted.shape == (48,) and int(got.accepted.sum()) == ref.stats.accepted
    torch.testing.assert_close(got.step, ref.step, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode,batch", [("faithful", 1), ("batched", 16)])
def test_a_static_shape_uap_is_the_reference_uap(trained_cnn, natural_gray, pneumonia, mode, batch) -> None:
    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    for criterion in (Untargeted(), Targeted(1)):
        kw = dict(radius=radius, p=2, eps=0.02, max_passes=2, mode=mode, batch_size=batch)
        ref = UAP(**kw)(trained_cnn, natural_gray, criterion=criterion, seed=3)
        got = UAP(**kw, static_shapes=True)(trained_cnn, natural_gray, criterion=criterion, seed=3)
        assert got.stats == ref.stats and ref.stats.accepted > 0
        torch.testing.assert_close(got.rho, ref.rho, rtol=0, atol=1e-5)


def test_a_targeted_uap_needs_no_clean_labels(trained_cnn, natural_gray, pneumonia) -> None:
    """Its rules never read C(x), so it runs without predicting them, and any labels given change nothing."""
    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    attack = UAP(radius=radius, p=2, eps=0.02, mode="batched", batch_size=16)
    calls = []
    hook = trained_cnn.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        plain = attack(trained_cnn, natural_gray, criterion=Targeted(1), seed=0)
    finally:
        hook.remove()
    assert max(calls) == 16 and calls[0] == 16  # batches only: no clean-label pass over all 60 images first
    wrong = attack(trained_cnn, natural_gray, criterion=Targeted(1), seed=0,
                   clean_labels=torch.ones(len(natural_gray), dtype=torch.long))
    assert torch.equal(plain.rho, wrong.rho) and plain.stats.accepted > 0


def test_projection_inside_the_ball_is_the_identity_without_a_host_read() -> None:
    rho = random_sphere((1, 8, 8), radius=1.0, p=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(project_lp(rho * 0.5, radius=1.0, p=2), rho * 0.5)
    out = project_lp(rho * 3, radius=1.0, p=2)
    assert abs(float(out.norm()) - 1.0) < 1e-6
    assert torch.equal(project_lp(torch.zeros(1, 4, 4), radius=1.0, p=2), torch.zeros(1, 4, 4))


def test_a_compiled_model_gives_the_same_uap(trained_cnn, natural_gray, pneumonia) -> None:
    """torch.compile (Inductor, static shapes) on the static-shape update: the reference UAP."""
    import copy

    from raylab.models import for_inference

    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    images = natural_gray[:48]  # 3 batches of 16: one shape
    attack = UAP(radius=radius, p=2, eps=0.02, mode="batched", batch_size=16, static_shapes=True)
    clean = predict_labels(trained_cnn, images)  # given: no compilation for a second shape
    ref = attack(trained_cnn, images, clean_labels=clean, seed=0)
    compiled = for_inference(copy.deepcopy(trained_cnn), compile=True)  # a copy: for_inference moves the module itself
    assert type(compiled).__name__ == "OptimizedModule" and not compiled.training
    got = attack(compiled, images, clean_labels=clean, seed=0)
    assert got.stats == ref.stats and ref.stats.accepted > 0
    torch.testing.assert_close(got.rho, ref.rho, rtol=0, atol=1e-4)


def _convs_channels_last(model: torch.nn.Module) -> bool | None:
    """True if every 3x3-or-larger convolution weight is in channels-last memory, False if all are NCHW."""
    convs = [w for w in model.parameters() if w.dim() == 4 and w.shape[1] > 1 and w.shape[-1] > 1]
    last = {w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs}
    return last.pop() if convs and len(last) == 1 else None


def test_channels_last_memory_gives_the_nchw_uap(trained_cnn, natural_gray, pneumonia) -> None:
    """for_inference puts a model in channels-last memory on CPUs too (faster there for most architectures,
    docs/bench/cpu-memory-format.json), the ResNets excepted unless --amp; the UAP is the NCHW model's."""
    import copy

    from raylab.models import NCHW_ON_CPU, ModelSpec, build_model, for_inference

    nchw = copy.deepcopy(trained_cnn).eval().to(memory_format=torch.contiguous_format)
    last = for_inference(copy.deepcopy(nchw))
    assert _convs_channels_last(last) is True and _convs_channels_last(nchw) is False
    resnet = ModelSpec(arch="resnet18", num_classes=2, in_channels=1, image_size=32)
    assert "resnet18" in NCHW_ON_CPU and _convs_channels_last(for_inference(build_model(resnet))) is False
    assert _convs_channels_last(for_inference(build_model(resnet), amp=True)) is True  # bf16 on AMX wants NHWC
    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    attack = UAP(radius=radius, p=2, eps=0.02, mode="batched", batch_size=16, max_passes=2)
    ref, got = attack(nchw, natural_gray, seed=0), attack(last, natural_gray, seed=0)
    assert got.stats == ref.stats and ref.stats.accepted > 0
    torch.testing.assert_close(got.rho, ref.rho, rtol=0, atol=1e-5)


def test_cuda_graphs_are_refused_off_a_gpu(trained_cnn, natural_gray) -> None:
    """Asked for on a CPU model, the graphed step is one clear error before any compute, not a silent eager run."""
    from raylab.core.graphs import CapturedStep

    with pytest.raises(ValueError, match="cuda_graphs needs a model on a CUDA device, got cpu"):
        UAP(radius=1.0, p=2, eps=0.02, cuda_graphs=True)(trained_cnn, natural_gray[:4])
    with pytest.raises(ValueError, match="CUDA graphs need the step's state on a CUDA device"):
        CapturedStep(lambda x: x, (torch.zeros(3),))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("mode,batch", [("faithful", 1), ("batched", 16)])
def test_a_uap_replayed_from_cuda_graphs_is_the_static_shape_uap(trained_cnn, natural_gray, pneumonia, mode, batch):
    """The captured step (update, projection, counts in place) replayed per batch: the eager static-shape UAP, on
    both criteria; 60 images at batch 16 end on a short batch, which runs eagerly. A capture that fails would fall
    back to the eager step with a RuntimeWarning: here it is an error, so the graph is what is tested."""
    model = trained_cnn.to("cuda")
    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    try:
        for criterion in (Untargeted(), Targeted(1)):
            kw = dict(radius=radius, p=2, eps=0.02, max_passes=2, mode=mode, batch_size=batch, static_shapes=True)
            ref = UAP(**kw)(model, natural_gray, criterion=criterion, seed=3)
            got = UAP(**kw, cuda_graphs=True)(model, natural_gray, criterion=criterion, seed=3)
            assert got.stats == ref.stats and ref.stats.accepted > 0
            torch.testing.assert_close(got.rho, ref.rho, rtol=0, atol=1e-5)
    finally:
        trained_cnn.to("cpu")


def test_device_batches_are_the_order_s_batches(natural_gray) -> None:
    """The loops' batches: ``images[idx]`` for each batch of the order, the short last one included; the GPU path's
    gather writes them into a reused buffer (rows past a short batch untouched) and returns that buffer's view."""
    from raylab.core.transfer import device_batches, gather

    order = torch.randperm(len(natural_gray), generator=torch.Generator().manual_seed(0))
    got = list(device_batches(natural_gray, order, 16, device=torch.device("cpu")))
    assert [len(idx) for idx, _ in got] == [16, 16, 16, 12]
    for (idx, x), want in zip(got, order.split(16)):
        assert torch.equal(idx, want) and torch.equal(x, natural_gray[want])
    buffer = torch.full((16, *natural_gray.shape[1:]), 7, dtype=natural_gray.dtype)
    view = gather(natural_gray, order[:12], buffer)
    assert torch.equal(view, natural_gray[order[:12]]) and view.data_ptr() == buffer.data_ptr()
    assert bool((buffer[12:] == 7).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the overlapped copy needs a CUDA device")
@pytest.mark.parametrize("method", ["paper", "sgd"])
def test_the_overlapped_copy_gives_the_same_uap(trained_cnn, natural_gray, pneumonia, method) -> None:
    """Batch k+1 copied on a side stream from pinned buffers while batch k computes: the same batches as the plain
    copy, so the same UAP (both loops, two passes, a short last batch); and every batch arrives intact."""
    from raylab.core import SGDUAP
    from raylab.core.transfer import device_batches

    device = torch.device("cuda")
    order = torch.randperm(len(natural_gray), generator=torch.Generator().manual_seed(0))
    for idx, x in device_batches(natural_gray, order, 16, device=device):
        assert x.is_cuda and torch.equal(x.cpu(), natural_gray[idx])
    model = trained_cnn.to(device)
    radius = zeta_radius(pneumonia["train_x"], zeta=0.04, p=2)
    try:
        make = ((lambda **kw: UAP(radius=radius, p=2, eps=0.02, max_passes=2, mode="batched", batch_size=16,
                                  static_shapes=True, **kw)) if method == "paper" else
                (lambda **kw: SGDUAP(radius=radius, p=2, max_passes=2, batch_size=16, **kw)))
        ref = make(prefetch=False)(model, natural_gray, seed=3)
        got = make(prefetch=True)(model, natural_gray, seed=3)
        assert got.stats == ref.stats and ref.stats.accepted > 0
        torch.testing.assert_close(got.rho, ref.rho, rtol=0, atol=1e-5)
    finally:
        trained_cnn.to("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="staging a batch on the GPU needs a CUDA device")
def test_a_batch_staged_from_another_thread_arrives_intact_on_the_update_s_stream(natural_gray) -> None:
    """The engine worker's staging (engine/staging.py) on a GPU: batches copied on a side stream from the staging
    thread while the update's stream is busy arrive intact on that stream."""
    import threading

    from raylab.engine.staging import Staging

    staging = Staging(torch.device("cuda"))
    batches = [natural_gray[k: k + 16].clone() for k in range(0, 48, 16)]
    busy = torch.randn(4096, 4096, device="cuda")
    for key, batch in enumerate(batches):
        copier = threading.Thread(target=staging.put, args=(key, batch))
        copier.start()
        for _ in range(8):
            busy = busy @ busy / 4096  # the update's stream works meanwhile
        copier.join()
        x = staging.take(key)
        assert x is not None and x.is_cuda and torch.equal(x.cpu(), batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_decodes_a_batch_close_to_the_readers_pixels(tmp_path) -> None:
    """The worker's device decode (``--decode-on worker``) on a GPU: nvJPEG's IDCT differs from libjpeg's by a level
    or so, never by more than a few."""
    from raylab.data.jpeg import EncodedBatch, decode_batch
    from raylab.data.shards import ShardReport, batches, decode_stream, iter_samples, write_shards

    from .conftest import IMAGENET

    m = write_shards(IMAGENET, tmp_path / "j", sample=32, shard_size=32, size=299, channels=3, image_format="jpg")
    reference = next(batches(decode_stream(iter_samples(m), channels=3, size=299, report=ShardReport()), 32))
    batch = next(batches(decode_stream(iter_samples(m), channels=3, size=299, report=ShardReport(), device_jpegs=True), 32))
    assert isinstance(batch.images, EncodedBatch)
    images, skipped = decode_batch(batch.images, channels=3, device="cuda")
    diff = (images.cpu().int() - reference.images.int()).abs()
    assert skipped == [] and images.is_cuda and diff.float().mean() < 1.0 and diff.max() <= 8
