"""The engine's round commit and δ stop as pure functions: no Ray, real tensors."""

from __future__ import annotations

import io

import pytest
import torch

from raylab.core import StepStats, project_lp, sgd_step
from raylab.engine.labels import CleanLabels
from raylab.engine.readers import BatchMeta, Position
from raylab.engine.state import (
    FINGERPRINT_KEYS, PaperRule, RunState, SGDRule, WorkerResult, commit_round, distinct, end_of_pass, fingerprint,
    record_marker,
)
from raylab.data.shards import Cursor
from raylab.errors import InputError, RaylabError


def _meta(pass_: int, start: int, size: int, *, skipped=(), failed=()) -> BatchMeta:
    return BatchMeta(start=Position(pass_, Cursor(0, start)), end=Position(pass_, Cursor(0, start + size)), size=size,
                     keys=[f"{i:08d}" for i in range(start, start + size)], skipped=list(skipped),
                     shards_failed=list(failed), decode_seconds=0.0)


def test_a_round_sums_in_worker_order_projects_once_and_then_counts() -> None:
    state = RunState.start((1, 4, 4), workers=2)
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(1, 4, 4, generator=g) for _ in range(2)]
    results = [WorkerResult(1, steps[1], StepStats(4, 3, 1), _meta(0, 0, 4, skipped=[("s:1", "corrupt")])),
               WorkerResult(0, steps[0], StepStats(4, 4, 2), _meta(0, 0, 4))]
    new = commit_round(state, results, rule=PaperRule(0.5, 2))
    torch.testing.assert_close(new.rho, project_lp(steps[0] + steps[1], radius=0.5, p=2), rtol=0, atol=0)
    assert float(new.rho.norm()) == pytest.approx(0.5)
    assert new.round == 1 and new.stats == {"images": 8, "active": 7, "accepted": 3}
    assert new.per_pass == {"0": {"images": 8, "active": 7, "accepted": 3}}
    assert new.positions == [[0, 0, 4], [0, 0, 4]] and new.skipped == [["s:1", "corrupt"]]
    # the old state is untouched (pure)
    assert state.round == 0 and state.stats["images"] == 0 and float(state.rho.abs().sum()) == 0
    assert state.positions == [[0, 0, 0], [0, 0, 0]] and state.skipped == []


def test_no_accepted_step_leaves_rho_as_it_was() -> None:
    state = RunState.start((1, 2, 2), workers=1).copy(rho=torch.full((1, 2, 2), 0.1))
    new = commit_round(state, [WorkerResult(0, torch.ones(1, 2, 2), StepStats(4, 4, 0), _meta(0, 0, 4))], rule=PaperRule(1.0, "inf"))
    assert torch.equal(new.rho, state.rho) and new.stats["images"] == 4


def test_a_non_finite_rho_stops_the_round_before_anything_is_counted() -> None:
    state = RunState.start((1, 2, 2), workers=2)
    bad = torch.tensor([[[float("nan"), 0.0], [0.0, 0.0]]])
    results = [WorkerResult(0, bad, StepStats(4, 4, 1), _meta(0, 0, 4)),
               WorkerResult(1, torch.zeros(1, 2, 2), StepStats(4, 4, 0), _meta(0, 0, 4))]
    with pytest.raises(RaylabError, match="round 1: rho became NaN/inf"):
        commit_round(state, results, rule=PaperRule(1.0, 2))
    assert state.round == 0 and state.stats == {"images": 0, "active": 0, "accepted": 0} and state.per_pass == {}


def test_pass_end_markers_and_the_delta_stop() -> None:
    state = RunState.start((1, 2, 2), workers=1)
    state = commit_round(state, [WorkerResult(0, torch.zeros(1, 2, 2), StepStats(4, 0, 0), _meta(0, 0, 4))], rule=PaperRule(1.0, 2))
    marker = BatchMeta(start=Position(0, Cursor(0, 4)), end=Position(1, Cursor(0, 0)), size=0, keys=[],
                       skipped=[("s:9", "truncated")], shards_failed=[("s", "ends early")], decode_seconds=0.0)
    state = record_marker(state, 0, marker)
    assert state.positions == [[1, 0, 0]] and state.shards_failed == [["s", "ends early"]]
    stopped, line = end_of_pass(state, max_passes=3, delta=0.1)  # every visited image already fooled: stop
    assert stopped.stopped_by_delta and "after pass 1" in line and not state.stopped_by_delta
    again, line = end_of_pass(stopped, max_passes=3, delta=0.1)  # a pass is checked once
    assert line is None
    assert distinct([["a", "x"], ["b", "y"], ["a", "x"]]) == ("a: x", "b: y")


def test_a_checkpoint_round_trips_and_refuses_another_run() -> None:
    state = commit_round(RunState.start((1, 2, 2), workers=1),
                         [WorkerResult(0, torch.ones(1, 2, 2), StepStats(4, 4, 2), _meta(0, 0, 4))], rule=PaperRule(1.0, 2))
    attack = {k: None for k in FINGERPRINT_KEYS} | {"workers": 1, "eps": 0.01, "method": "paper"}
    shards = [("shard-000000.tar", 12, "ab" * 32)]
    mine = fingerprint(attack, b"weights", shards, "cd" * 32)
    assert mine == fingerprint(dict(attack), b"weights", list(shards), "cd" * 32)  # a value: the same run, the same
    back = RunState.from_bytes(state.to_bytes(mine), mine, "ckpt")
    assert back.round == 1 and back.stats == state.stats and torch.equal(back.rho, state.rho)
    # a resume with other settings is refused naming each difference, as a sweep's is
    other = fingerprint(attack | {"workers": 2, "eps": 0.02}, b"weights", shards, "ef" * 32)
    with pytest.raises(InputError, match=r"^ckpt: checkpoint of a different run \(eps=0.01 then, 0.02 now; workers=1 then, "
                                         r"2 now; the medical data differs \(the radius comes from its training images\)\); "
                                         r"use a new output location, or the settings it was started with$"):
        RunState.from_bytes(state.to_bytes(mine), other, "ckpt")
    with pytest.raises(InputError, match=r"\(the model's weights differ; the shards differ\)"):
        RunState.from_bytes(state.to_bytes(mine), fingerprint(attack, b"other", shards[:0], "cd" * 32), "ckpt")
    # a checkpoint written before the parts were recorded is still read, and refused in the old words
    legacy = torch.load(io.BytesIO(state.to_bytes(mine)), weights_only=True)
    del legacy["parts"]
    buf = io.BytesIO()
    torch.save(legacy, buf)
    assert RunState.from_bytes(buf.getvalue(), mine, "ckpt").round == 1
    with pytest.raises(InputError, match=r"\(model, shards, medical data or UAP parameters differ\)"):
        RunState.from_bytes(buf.getvalue(), other, "ckpt")
    # one cut short says so (before: only the exception's type)
    with pytest.raises(InputError, match=r"^ckpt: cannot read checkpoint \(RuntimeError: not a whole torch file: cut short or damaged\)$"):
        RunState.from_bytes(state.to_bytes(mine)[:200], mine, "ckpt")


def test_an_sgd_round_takes_one_step_along_the_summed_gradient_with_the_scheduled_size() -> None:
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(1, 3, 3, generator=g) for _ in range(2)]
    rule = SGDRule(radius=2.0, p=2, lr=0.25, schedule="linear", total_steps=4, sign=1.0)
    state = RunState.start((1, 3, 3), workers=2)
    for t in range(2):
        results = [WorkerResult(w, grads[w] * (t + 1), StepStats(4, 4, 4), _meta(0, 4 * t, 4)) for w in (1, 0)]
        expected = sgd_step(state.rho, grads[0] * (t + 1) + grads[1] * (t + 1), size=0.25 * 2.0 * (1 - t / 4), p=2,
                            radius=2.0, sign=1.0)
        state = commit_round(state, results, rule=rule)
        torch.testing.assert_close(state.rho, expected, rtol=0, atol=0)
    assert state.round == 2 and state.stats == {"images": 16, "active": 16, "accepted": 16}
    targeted = SGDRule(radius=2.0, p="inf", lr=0.1, schedule="constant", total_steps=4, sign=-1.0)
    down = commit_round(RunState.start((1, 3, 3), workers=1), [WorkerResult(0, grads[0], StepStats(4, 4, 4), _meta(0, 0, 4))],
                        rule=targeted)
    torch.testing.assert_close(down.rho, -0.2 * grads[0].sign(), rtol=0, atol=0)  # descends the target's loss


def test_clean_labels_are_handed_back_only_for_the_same_batch_in_a_later_pass() -> None:
    labels = CleanLabels()
    first = _meta(0, 4, 3)
    labels.put(0, first, torch.tensor([1, 0, 1]))
    again = _meta(1, 4, 3)  # the same batch (same start, keys, size) in pass 2
    assert labels.get(0, again).tolist() == [1, 0, 1] and labels.get(0, again).dtype == torch.int16
    assert labels.get(1, again) is None  # another reader's batch at the same position
    assert labels.get(0, _meta(1, 4, 2)) is None  # a shorter batch there (an image skipped) is computed again
    moved = BatchMeta(start=again.start, end=again.end, size=3, keys=["x", "5", "6"], skipped=[], shards_failed=[],
                      decode_seconds=0.0)
    assert labels.get(0, moved) is None  # other images at that position


def test_the_feed_check_names_the_reader_cpus_that_would_keep_up_once() -> None:
    from raylab.engine.feed import ROUNDS, FeedCheck

    fed = FeedCheck(threads=2)
    for _ in range(ROUNDS):
        fed.add(0.05, 0.10)  # decoding faster than compute: prefetch hides it
    assert fed.verdict(0.30, ROUNDS) is None
    starved = FeedCheck(threads=2)
    for _ in range(ROUNDS):
        starved.add(0.25, 0.10)
    assert starved.verdict(0.60, ROUNDS - 1) is None  # too early to judge
    assert starved.verdict(0.01, ROUNDS) is None  # the workers hardly waited
    line = starved.verdict(0.60, ROUNDS)
    assert line is not None and "waited for data 60%" in line and "--cpus-per-reader 5" in line  # 2 x 0.25 / 0.10
    assert starved.verdict(0.60, ROUNDS + 1) is None  # said once


def test_the_medical_digest_hashes_the_sets_bytes_in_place_as_it_did_by_copy() -> None:
    """The digest an engine checkpoint holds is the one it held when each split was copied to hash it, so every
    checkpoint written before still resumes; and another set (one label changed) has another."""
    import hashlib

    from raylab.data.medical import load_medmnist
    from raylab.target import medical_digest

    from .conftest import PNEUMONIA

    data = load_medmnist(PNEUMONIA)
    h = hashlib.sha256("\n".join(data.class_names).encode())
    for t in (data.train_images, data.train_labels, data.val_images, data.val_labels, data.test_images, data.test_labels):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    assert medical_digest(data) == h.hexdigest()
    data.test_labels[0] = 1 - data.test_labels[0]
    assert medical_digest(data) != h.hexdigest()
