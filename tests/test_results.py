"""The results layer: rows of real-shaped run records, a hive-partitioned Parquet dataset, its views."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import raylab
from raylab.config import AttackConfig
from raylab.errors import InputError
from raylab.evaluation import Evaluation, Rates
from raylab.record import Build, RunRecord, Source
from raylab.results import (SCHEMA, SCHEMA_VERSION, filter_value, over_seeds, read_results, select_best, summary_table,
                            write_rows)
from raylab.results.curves import SELECTED, curves, curves_png
from raylab.results.naming import short_names

def record_for(p: Any, zeta: float, eps: float, target: str | None, fooling: float, success: float | None,
               *, model: str = "runs/demo/model.pt", max_passes: int = 3) -> RunRecord:
    """A record as the engine makes it (values from a real engine run on PneumoniaMNIST), with the given rates."""
    names = ("NORMAL", "PNEUMONIA")
    uap = Rates(fooling, {"NORMAL": success, "PNEUMONIA": 1 - success} if target else
                {"NORMAL": 0.35576921701431274, "PNEUMONIA": 0.6442307829856873}, [[1 - fooling, fooling], [zeta, 1 - zeta]])
    random = Rates(0.014423076994717121, {"NORMAL": success / 4, "PNEUMONIA": 1 - success / 4} if target else
                   {"NORMAL": 0.39262819290161133, "PNEUMONIA": 0.6073718070983887}, [[1.0, 0.0], [0.0232, 0.9768]])
    labels = torch.zeros(624, dtype=torch.long)
    evaluation = Evaluation(class_names=names, target=target, test_images=624, clean_accuracy=0.9166666865348816,
                            balanced_accuracy=0.89, majority_accuracy=0.625, class_accuracy={"NORMAL": 0.85, "PNEUMONIA": 0.93},
                            clean_label_composition={"NORMAL": 0.378, "PNEUMONIA": 0.622}, uap=uap, random=random,
                            clean=labels, adversarial=labels, controlled=labels)
    attack = AttackConfig(p=p, zeta=zeta, eps=eps, max_passes=max_passes, target=target, batch_size=32)
    return RunRecord(attack=attack, config=attack.to_dict(), model=model, arch="small_cnn", image_size=28,
                     medical="../shared/data/pneumoniamnist.npz", radius=3.0128293480635735,
                     source=Source(kind="shards", location="runs/shards", images=1000, used=1000),
                     build=Build(images=3000, active=2937, accepted=38, passes=3, seconds=55.42703410000013, workers=2,
                                 batch_size=32, engine={"rounds": 48}),
                     evaluation=evaluation, rho_l2=1.3849472999572754, rho_linf=0.06000000610947609)


# (sweep, trial, p, zeta, eps, target, fooling_rate, success_rate of the target)
TRIALS = [
    ("grid-a", "t0", 2, 0.02, 0.001, None, 0.10, None),
    ("grid-a", "t1", 2, 0.02, 0.002, None, 0.30, None),  # best at zeta 0.02
    ("grid-a", "t2", "inf", 0.04, 0.001, None, 0.50, None),  # ties t3; smaller eps wins
    ("grid-a", "t3", 2, 0.04, 0.002, None, 0.50, None),
    ("grid-b", "t4", 2, 0.04, 0.001, "NORMAL", 0.90, 0.40),  # higher R_f but lower R_s
    ("grid-b", "t5", "inf", 0.04, 0.004, "NORMAL", 0.20, 0.85),  # best targeted by R_s
]


def make_rows() -> list[dict[str, Any]]:
    rows = []
    for sweep, trial, p, zeta, eps, target, fooling, success in TRIALS:
        record = dataclasses.replace(record_for(p, zeta, eps, target, fooling, success),
                                     uap_uri=f"s3://bucket/{sweep}/{trial}/uap.npy")
        rows.append(record.row(sweep=sweep, trial_id=trial, run_id=f"run-{trial}"))
    return rows


@pytest.fixture(params=["local", "memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        yield str(tmp_path / "results")
    else:
        url = f"memory://raylab-results-{uuid.uuid4().hex[:8]}"
        yield url
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def by_trial(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {r["trial_id"]: r for r in table.to_pylist()}


def test_a_records_row_and_metrics_are_two_views_of_one_record() -> None:
    record = dataclasses.replace(record_for("inf", 0.04, 0.004, "NORMAL", 0.2, 0.85), uap_uri="memory://x/uap.npy")
    record = dataclasses.replace(record, source=dataclasses.replace(record.source, skipped=("a.jpg: truncated", "b.jpg: x")))
    row = record.row(sweep="s", trial_id="t", run_id="r")
    m = record.metrics()
    assert list(row) == SCHEMA.names
    assert row["schema_version"] == SCHEMA_VERSION == 3
    assert row["method"] == "paper" and row["lr"] is None and row["eps"] == 0.004
    assert row["p"] == "inf" and row["target"] == "NORMAL" == m["target"] and row["workers"] == 2
    assert row["success_rate"] == 0.85 == m["success_rate"]["NORMAL"]
    assert row["random_success_rate"] == pytest.approx(0.85 / 4) and m["random"]["success_rate"]["NORMAL"] == row["random_success_rate"]
    assert row["source_kind"] == "shards" == m["source"]["kind"] and row["source"] == "runs/shards" == m["source"]["location"]
    assert row["images_processed"] == 3000 == m["stats"]["images"] and row["accepted"] == 38 == m["stats"]["accepted"]
    assert row["images_skipped"] == 2 == m["source"]["skipped"]
    assert row["uap_l2"] == m["uap_norms"]["l2"] and row["uap_linf"] == m["uap_norms"]["linf"]
    assert row["wall_seconds"] == m["seconds"] and row["images_per_second"] == m["images_per_second"] == pytest.approx(3000 / 55.427, rel=1e-4)
    assert row["fooling_rate"] == m["fooling_rate"] and row["confusion_matrix"] == m["confusion_matrix"]
    assert row["zeta"] == m["config"]["zeta"] and row["eps"] == m["config"]["eps"] and m["rounds"] == 48
    assert row["raylab_version"] == raylab.__version__ and isinstance(row["torch_version"], str)
    assert row["created_at"].tzinfo is not None
    untargeted = record_for(2, 0.04, 0.002, None, 0.1, None).row(sweep="s", trial_id="t")
    assert untargeted["p"] == "2" and untargeted["target"] is None
    assert untargeted["success_rate"] is None and untargeted["random_success_rate"] is None


def test_write_read_round_trip(location: str) -> None:
    rows = make_rows()
    uris = write_rows(location, rows)
    assert len(uris) == len(rows)
    assert all("/grid-" in u and "sweep=" not in u and u.endswith(".parquet") for u in uris)
    assert any(u.endswith("/grid-a/trial-t0.parquet") for u in uris)

    table = read_results(location)
    assert table.schema == SCHEMA  # every column, its type and nullability, once each
    assert table.column_names.count("sweep") == 1
    assert table.num_rows == len(rows)
    got = by_trial(table)
    for row in rows:
        back = got[row["trial_id"]]
        for name in SCHEMA.names:
            if name == "created_at":
                assert back[name] == row[name].replace(microsecond=row[name].microsecond // 1000 * 1000)
                assert back[name].tzinfo is not None
            else:
                assert back[name] == row[name], name
    assert got["t5"]["confusion_matrix"] == [[0.8, 0.2], [0.04, 0.96]]
    assert table.schema.field("confusion_matrix").type == pa.list_(pa.list_(pa.float64()))
    assert got["t5"]["success_rate"] == 0.85 and got["t0"]["success_rate"] is None
    assert got["t2"]["p"] == "inf" and got["t0"]["p"] == "2"

    fs, root = fsspec.core.url_to_fs(location if "://" in location else str(Path(location).resolve()))
    doc = json.loads(fs.cat(f"{root}/_schema.json"))
    assert doc["schema_version"] == 3
    assert [f["name"] for f in doc["fields"]] == SCHEMA.names
    assert {f["name"]: f["type"] for f in doc["fields"]}["created_at"] == "timestamp[ms, tz=UTC]"

    # each file stands alone, and a hive-partitioned reader sees one sweep column too
    for path in fs.glob(f"{root}/*/trial-*.parquet"):
        with fs.open(path, "rb") as f:
            one = pq.read_table(f)
        assert one.schema == SCHEMA and one.num_rows == 1
        assert path.split("/")[-2] == one["sweep"][0].as_py()
    hive = ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive",
                      exclude_invalid_files=False, ignore_prefixes=[".", "_"]).to_table()
    assert hive.num_rows == len(rows) and hive.column_names.count("sweep") == 1


def test_local_files_are_readable_by_path(tmp_path: Path) -> None:
    uris = write_rows(tmp_path / "r", make_rows())
    for uri in uris:
        t = pq.read_table(uri)
        assert t.schema == SCHEMA and t.num_rows == 1
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["_schema.json", "grid-a", "grid-b"]


def test_filters(location: str) -> None:
    write_rows(location, make_rows())
    assert sorted(read_results(location, filters={"p": "2", "zeta": 0.04})["trial_id"].to_pylist()) == ["t3", "t4"]
    assert sorted(read_results(location, filters={"p": 2})["trial_id"].to_pylist()) == ["t0", "t1", "t3", "t4"]
    assert read_results(location, filters={"sweep": "grid-b"})["trial_id"].to_pylist() in (["t4", "t5"], ["t5", "t4"])
    assert read_results(location, filters={"sweep": "nope"}).num_rows == 0
    assert sorted(read_results(location, filters={"target": None})["trial_id"].to_pylist()) == ["t0", "t1", "t2", "t3"]
    assert read_results(location, filters={"target": "NORMAL", "eps": 0.004})["trial_id"].to_pylist() == ["t5"]
    assert sorted(read_results(location, filters={"eps": [0.001, 0.004]})["trial_id"].to_pylist()) == ["t0", "t2", "t4", "t5"]
    assert read_results(location, filters={"clip": False}).num_rows == len(TRIALS)
    with pytest.raises(InputError, match="'colour'"):
        read_results(location, filters={"colour": "red"})
    with pytest.raises(InputError, match="zeta"):
        read_results(location, filters={"zeta": "big"})


def test_rewriting_a_trial_replaces_it(location: str) -> None:
    rows = make_rows()
    write_rows(location, rows)
    again = dict(rows[0], fooling_rate=0.99, run_id="resumed")
    write_rows(location, [again])
    table = read_results(location)
    assert table.num_rows == len(rows)
    assert table["trial_id"].to_pylist().count("t0") == 1
    assert by_trial(table)["t0"]["fooling_rate"] == 0.99 and by_trial(table)["t0"]["run_id"] == "resumed"


def test_crashed_write_is_ignored(location: str) -> None:
    write_rows(location, make_rows()[:2])
    fs, root = fsspec.core.url_to_fs(location if "://" in location else str(Path(location).resolve()))
    for name in (".trial-x.parquet.tmp", ".trial-t0.parquet.1a2b3c4d.tmp"):
        with fs.open(f"{root}/grid-a/{name}", "wb") as f:
            f.write(b"PAR1 half a file")
    table = read_results(location)
    assert sorted(table["trial_id"].to_pylist()) == ["t0", "t1"]


def test_bad_rows_raise_input_error_naming_the_column(tmp_path: Path) -> None:
    row = make_rows()[0]
    loc = tmp_path / "r"
    missing = {k: v for k, v in row.items() if k != "zeta"}
    with pytest.raises(InputError, match=r"trial 't0'.*'zeta'"):
        write_rows(loc, [missing])
    with pytest.raises(InputError, match=r"trial 't0'.*'eps'.*number"):
        write_rows(loc, [dict(row, eps="0.002")])
    with pytest.raises(InputError, match=r"'image_size'"):
        write_rows(loc, [dict(row, image_size=28.5)])
    with pytest.raises(InputError, match=r"'clip'"):
        write_rows(loc, [dict(row, clip=0)])
    with pytest.raises(InputError, match=r"'fooling_rate' must not be null"):
        write_rows(loc, [dict(row, fooling_rate=None)])
    with pytest.raises(InputError, match=r"'confusion_matrix'"):
        write_rows(loc, [dict(row, confusion_matrix=[1.0, 0.0])])
    with pytest.raises(InputError, match=r"'created_at'"):
        write_rows(loc, [dict(row, created_at=datetime(2024, 1, 1))])
    with pytest.raises(InputError, match=r"'schema_version'"):
        write_rows(loc, [dict(row, schema_version=1)])
    with pytest.raises(InputError, match=r"'method' must be one of paper, sgd"):
        write_rows(loc, [dict(row, method="pgd")])
    with pytest.raises(InputError, match=r"'p'"):
        write_rows(loc, [dict(row, p="3")])
    with pytest.raises(InputError, match=r"unknown column 'colour'"):
        write_rows(loc, [dict(row, colour="red")])
    with pytest.raises(InputError, match=r"sweep '\.\./x'"):
        write_rows(loc, [dict(row, sweep="../x")])
    with pytest.raises(InputError, match=r"sweep '_hidden' must not start with '_'"):
        write_rows(loc, [dict(row, sweep="_hidden")])
    with pytest.raises(InputError, match="twice"):
        write_rows(loc, [row, row])
    # a bad row anywhere means nothing is written
    with pytest.raises(InputError, match=r"trial 't1'.*'zeta'"):
        write_rows(loc, [row, {k: v for k, v in make_rows()[1].items() if k != "zeta"}])
    assert not loc.exists()


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_results(tmp_path / "missing")
    with pytest.raises(InputError, match="does not exist"):
        read_results(f"memory://raylab-missing-{uuid.uuid4().hex[:8]}")
    (tmp_path / "empty").mkdir()
    empty = read_results(tmp_path / "empty")
    assert empty.num_rows == 0 and empty.schema == SCHEMA
    for name, version in (("future", 4), ("old", 1)):  # version 1 rows had no method, lr
        (tmp_path / name).mkdir()
        (tmp_path / name / "_schema.json").write_text(json.dumps({"schema_version": version, "fields": []}))
        with pytest.raises(InputError, match=f"holds results of schema version {version}; this raylab reads versions 2, 3"):
            read_results(tmp_path / name)
        with pytest.raises(InputError, match=f"schema version {version}"):
            write_rows(tmp_path / name, make_rows()[:1])


def test_a_damaged_trial_file_is_named_and_a_sweep_folder_is_pointed_to_its_location(tmp_path: Path) -> None:
    loc = tmp_path / "r"
    write_rows(loc, make_rows())
    (loc / "grid-a" / "trial-t1.parquet").write_bytes(b"PAR1cut")  # a file cut short by hand
    with pytest.raises(InputError) as e:
        read_results(loc)
    msg = str(e.value)
    assert "\n" not in msg and f"{loc / 'grid-a' / 'trial-t1.parquet'}: " in msg and msg.endswith("move that file aside to read the rest")
    (loc / "grid-a" / "trial-t1.parquet").unlink()
    assert read_results(loc).num_rows == len(TRIALS) - 1  # the rest, once it is moved aside
    with pytest.raises(InputError, match=rf"^{loc / 'grid-b'} is one sweep's folder: read the location above it, {loc}, "
                                         r"filtered on sweep=grid-b$"):
        read_results(loc / "grid-b")


def test_a_filter_value_takes_its_column_type(tmp_path: Path) -> None:
    """The CLI's ``--filter COLUMN=VALUE`` text: a sweep named ``5`` stays text, numbers become numbers."""
    assert filter_value("sweep", "5") == "5" and filter_value("zeta", "4e-2") == 0.04 and filter_value("seed", "2") == 2
    assert filter_value("amp", "true") is True and filter_value("target", "none") is None and filter_value("p", "inf") == "inf"
    write_rows(tmp_path / "r", make_rows())
    with pytest.raises(InputError, match=r"^filter seed='2.5' does not match the column's type int64$"):
        read_results(tmp_path / "r", filters={"seed": filter_value("seed", "2.5")})
    # a path as the tables show it, by its last parts (found nothing before); an absolute path is itself only
    rows = [dict(make_rows()[0], trial_id=f"m{i}", model=m)
            for i, m in enumerate(["/runs/a/models/m.pt", "/runs/b/models/m.pt", "/runs/a/models/n.pt"])]
    write_rows(tmp_path / "paths", rows)

    def ids(**filters: str) -> list[str]:
        return sorted(read_results(tmp_path / "paths", filters=filters)["trial_id"].to_pylist())
    assert ids(model="b/models/m.pt") == ["m1"] and ids(model="m.pt") == ["m0", "m1"] and ids(model="n.pt") == ["m2"]
    assert ids(model="/runs/a/models/m.pt") == ["m0"] and ids(model="/models/m.pt") == [] and ids(model="s/m.pt") == []


def test_select_best(location: str) -> None:
    write_rows(location, make_rows())
    best = select_best(read_results(location))
    assert best.schema == SCHEMA
    picked = {(r["sweep"], r["zeta"]): (r["trial_id"], r["eps"], r["p"]) for r in best.to_pylist()}
    assert picked == {
        ("grid-a", 0.02): ("t1", 0.002, "2"),  # highest R_f
        ("grid-a", 0.04): ("t2", 0.001, "inf"),  # R_f tie -> smaller eps
        ("grid-b", 0.04): ("t5", 0.004, "inf"),  # targeted: highest R_s, not highest R_f
    }
    assert best["sweep"].to_pylist() == ["grid-a", "grid-a", "grid-b"]
    assert best["zeta"].to_pylist() == [0.02, 0.04, 0.04]


def test_select_best_keeps_groups_apart() -> None:
    rows = make_rows()
    # same sweep/zeta but another source kind and a non-targeted row in the targeted sweep: separate groups
    rows.append(dict(rows[1], trial_id="t6", source_kind="random", source="random", fooling_rate=0.01))
    rows.append(dict(rows[3], sweep="grid-b", trial_id="t7", fooling_rate=0.05))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    ids = sorted(select_best(table)["trial_id"].to_pylist())
    assert ids == ["t1", "t2", "t5", "t6", "t7"]
    assert select_best(SCHEMA.empty_table()).num_rows == 0


def test_select_best_scores_a_grid_point_by_its_mean_over_seeds_not_its_luckiest_seed() -> None:
    base = make_rows()[1]  # grid-a, zeta 0.02, p 2
    rows = [dict(base, trial_id=f"{name}-s{seed}", eps=eps, seed=seed, fooling_rate=rate)
            for name, eps, seed, rate in [("lucky", 0.001, 0, 0.90), ("lucky", 0.001, 1, 0.10),  # mean 0.50
                                          ("steady", 0.002, 0, 0.60), ("steady", 0.002, 1, 0.62)]]  # mean 0.61
    best = select_best(pa.Table.from_pylist(rows, schema=SCHEMA))
    assert best["trial_id"].to_pylist() == ["steady-s0", "steady-s1"]  # every seed of the chosen point
    one = select_best(pa.Table.from_pylist(rows[:1] + rows[2:3], schema=SCHEMA))  # one seed each: as before
    assert one["trial_id"].to_pylist() == ["lucky-s0"]


def test_rows_that_differ_only_by_seed_are_one_grid_point_with_mean_and_sd() -> None:
    rows = make_rows()
    seeded = [dict(rows[1], trial_id=f"t1-s{seed}", seed=seed, fooling_rate=rate, random_fooling_rate=0.01)
              for seed, rate in [(2, 0.40), (1, 0.20)]]
    table = over_seeds(pa.Table.from_pylist([rows[0], rows[1], *seeded, rows[4]], schema=SCHEMA))
    points = {(r["sweep"], r["eps"], r["target"]): r for r in table.to_pylist()}
    assert len(points) == 3 and "trial_id" not in table.column_names and "seed" not in table.column_names
    t1 = points[("grid-a", 0.002, None)]
    assert t1["seeds"] == [0, 1, 2] and t1["fooling_rate"] == pytest.approx(0.3)
    assert t1["fooling_rate_sd"] == pytest.approx(0.1) and t1["success_rate"] is None and t1["success_rate_sd"] is None
    alone = points[("grid-a", 0.001, None)]
    assert alone["seeds"] == [0] and alone["fooling_rate"] == 0.10 and alone["fooling_rate_sd"] == 0.0
    assert points[("grid-b", 0.001, "NORMAL")]["success_rate"] == pytest.approx(0.40)
    lines = summary_table(table).splitlines()
    header = lines[0].split()
    assert header[header.index("seeds") + 1:header.index("seeds") + 4] == ["fooling_rate", "±", "sd"]
    assert "[0, 1, 2]" in lines[3] and "0.3 ± 0.1" in lines[3]
    assert "0.1 (1 seed)" in lines[2] and "± 0" not in lines[2]  # one sample has no sd; '± 0' read as a tight result


def _three_seeds(rows: list[dict[str, Any]]) -> pa.Table:
    """Every row of :data:`TRIALS` run with seeds 0, 1, 2, whose rates are the row's, +0.02 and -0.02."""
    return pa.Table.from_pylist([dict(r, trial_id=f"{r['trial_id']}-s{s}", seed=s, fooling_rate=r["fooling_rate"] + d,
                                      success_rate=None if r["success_rate"] is None else r["success_rate"] - d)
                                 for r in rows for s, d in [(0, 0.0), (1, 0.02), (2, -0.02)]], schema=SCHEMA)


def test_curves_draw_each_grid_point_over_zeta_as_mean_and_sd_over_its_seeds() -> None:
    found = {c.label: c for c in curves(_three_seeds(make_rows()))}
    assert list(found) == ["sweep=grid-a, p=2, ε=0.001", "sweep=grid-a, p=2, ε=0.002", "sweep=grid-a, p=inf, ε=0.001",
                           "sweep=grid-b, p=2, ε=0.001, target=NORMAL", "sweep=grid-b, p=inf, ε=0.004, target=NORMAL"]
    two = found["sweep=grid-a, p=2, ε=0.002"]  # t1 at zeta 0.02 and t3 at 0.04: one curve of two points
    assert two.x == [0.02, 0.04] and two.rate == pytest.approx([0.30, 0.50]) and two.sd == pytest.approx([0.02, 0.02])
    assert two.random == pytest.approx([0.014423, 0.014423], abs=1e-6) and two.seeds == [3, 3] and not two.targeted
    targeted = found["sweep=grid-b, p=inf, ε=0.004, target=NORMAL"]  # R_s toward the target, not R_f
    assert targeted.targeted and targeted.rate == pytest.approx([0.85]) and targeted.random == pytest.approx([0.2125])
    over_eps = curves(_three_seeds(make_rows()), "eps")  # another x: zeta now names the curves
    assert [c.label for c in over_eps if c.x == [0.001, 0.002]] == ["sweep=grid-a, p=2, ζ=0.02"]
    # rows of the random control written with a placeholder step (before it was null): over ζ a curve of their own,
    # over ε only the dotted control
    control = [dict(r, trial_id=f"{r['trial_id']}-random", source_kind="random", source="random", eps=0.001 + 0.001 * i)
               for i, r in enumerate(make_rows()[:2])]
    with_control = pa.Table.from_pylist(make_rows() + control, schema=SCHEMA)
    assert any("source=random" in c.label for c in curves(with_control))
    assert not any("random" in c.label for c in curves(with_control, "eps"))
    # both methods: a curve is named by the values it has (an sgd curve read "method=sgd, ε=None, lr=0.5")
    sgd = [dict(r, trial_id=f"{r['trial_id']}-sgd", method="sgd", eps=None, lr=0.5) for r in make_rows()[:2]]
    labels = [c.label for c in curves(pa.Table.from_pylist(make_rows() + sgd, schema=SCHEMA))]
    assert "sweep=grid-a, method=sgd, p=2, lr=0.5" in labels and "sweep=grid-a, method=paper, p=2, ε=0.002" in labels
    assert not any("None" in label for label in labels)


def test_after_select_best_a_curve_is_one_group_labelled_with_its_chosen_step_per_zeta() -> None:
    found = curves(select_best(_three_seeds(make_rows())), chosen=SELECTED)
    assert [(c.label, c.x, c.notes) for c in found] == [
        ("sweep=grid-a", [0.02, 0.04], ["ε=0.002 p=2", "ε=0.001 p=inf"]),  # the ζ=0.04 tie went to the smaller ε
        ("sweep=grid-b, target=NORMAL", [0.04], ["ε=0.004 p=inf"])]
    assert found[0].rate == pytest.approx([0.30, 0.50])


def test_curves_are_drawn_in_one_panel_per_kind_of_rate() -> None:
    table = _three_seeds(make_rows())
    both = np.asarray(Image.open(io.BytesIO(curves_png(curves(table)))).convert("RGB")).astype(int)
    one = np.asarray(Image.open(io.BytesIO(curves_png(curves(table.filter(pc.is_null(table["target"])))))).convert("RGB"))
    assert both.shape[1:] == (1280, 3) and one.shape[1:] == (640, 3)  # R_f beside R_s; R_f alone
    assert one.shape[0] > both.shape[0] > 440  # the legend below: 4 lines for one panel, 3 in 2 columns for two
    for color in [(31, 119, 180), (255, 127, 14)]:  # tab10's first two curves are drawn
        assert (np.abs(one.astype(int) - color).sum(axis=2) < 30).sum() > 100


def test_a_plot_without_a_curve_is_refused_in_one_line() -> None:
    table = _three_seeds(make_rows())
    with pytest.raises(InputError, match="cannot plot over 'trial_id'; choose one of zeta, eps"):
        curves(table, "trial_id")
    with pytest.raises(InputError, match=r"every row has zeta=0.04, so there is no curve over it; the rows vary in eps"):
        curves(table.filter(pc.equal(table["zeta"], 0.04)))
    with pytest.raises(InputError, match="no rows to plot"):
        curves(table.slice(0, 0))
    sgd = [dict(r, method="sgd", eps=None, lr=0.5) for r in table.to_pylist()]
    with pytest.raises(InputError, match="no row has a value of 'eps'"):
        curves(pa.Table.from_pylist(sgd, schema=SCHEMA), "eps")


def test_the_two_methods_are_two_groups_and_an_sgd_row_has_no_eps() -> None:
    paper = record_for(2, 0.04, 0.002, None, 0.30, None).row(sweep="s", trial_id="a")
    sgd_record = record_for(2, 0.04, 0.002, None, 0.50, None)
    sgd_record = dataclasses.replace(sgd_record, attack=dataclasses.replace(sgd_record.attack, method="sgd", lr=0.2, max_passes=3))
    sgd = sgd_record.row(sweep="s", trial_id="b")
    assert sgd["method"] == "sgd" and sgd["eps"] is None and sgd["lr"] == 0.2
    best = select_best(pa.Table.from_pylist([paper, sgd], schema=SCHEMA))
    assert sorted(best["method"].to_pylist()) == ["paper", "sgd"]  # each method keeps its best, for comparison
    # a tie between two steps of the stochastic-gradient method goes to the smaller lr, as the paper's to the smaller ε
    larger = dataclasses.replace(sgd_record, attack=dataclasses.replace(sgd_record.attack, lr=0.5)).row(sweep="s", trial_id="a2")
    best = select_best(pa.Table.from_pylist([paper, larger, sgd], schema=SCHEMA))
    assert [(r["trial_id"], r["lr"]) for r in best.to_pylist() if r["method"] == "sgd"] == [("b", 0.2)]


def test_select_best_never_ranks_two_models_or_two_i_max_against_each_other() -> None:
    """Two checkpoints of one architecture (and two i_max of one model) are separate groups: each gets its best."""
    rows = [dataclasses.replace(record_for(2, 0.04, eps, None, rate, None, model=model, max_passes=passes)).row(
        sweep="s", trial_id=trial) for trial, model, passes, eps, rate in [
        ("a1", "runs/a.pt", 1, 0.001, 0.30), ("a2", "runs/a.pt", 1, 0.002, 0.40),
        ("b1", "runs/b.pt", 1, 0.001, 0.10), ("b2", "runs/b.pt", 1, 0.002, 0.05),
        ("a3", "runs/a.pt", 3, 0.001, 0.20)]]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert sorted(select_best(table)["trial_id"].to_pylist()) == ["a2", "a3", "b1"]


def test_summary_table(location: str) -> None:
    write_rows(location, make_rows())
    text = summary_table(read_results(location))
    lines = text.splitlines()
    header = lines[0].split()
    assert header == ["sweep", "trial_id", "arch", "source_kind", "method", "p", "zeta", "eps", "lr", "target",
                      "fooling_rate", "success_rate", "random_fooling_rate", "images_per_second"]
    assert set(lines[1]) <= {"-", " "}
    body = lines[2:]
    assert len(body) == len(TRIALS)
    # sorted by sweep, zeta, p, eps
    assert [line.split()[1] for line in body] == ["t0", "t1", "t3", "t2", "t4", "t5"]
    t5 = body[-1].split()
    assert t5 == ["grid-b", "t5", "small_cnn", "shards", "paper", "inf", "0.04", "0.004", "-", "NORMAL", "0.2", "0.85",
                  "0.0144", "54.1"]
    assert body[0].split()[9:12] == ["-", "0.1", "-"]
    # the header and the rule under it span the same width
    assert len({len(line) for line in lines[:2]}) == 1
    narrow = summary_table(read_results(location), columns=["trial_id", "fooling_rate"])
    assert narrow.splitlines()[0].split() == ["trial_id", "fooling_rate"]
    assert "(no results)" in summary_table(SCHEMA.empty_table())
    with pytest.raises(InputError, match="'colour'"):
        summary_table(read_results(location), columns=["colour"])


def test_the_summary_tells_apart_rows_of_different_runs() -> None:
    """Two checkpoints of one architecture, two shard locations, two seeds: the table printed 'resnet18 shards' for
    all of them, rows that read the same with different rates. Now the settings that vary get columns, paths by the
    fewest last parts that tell them apart."""
    rows = []
    for model in ("runs/a/models/m.pt", "runs/b/models/m.pt"):
        for source in ("/data/imagenet/shards", "/data/flickr/shards", "random"):
            for seed in (0, 1):
                r = record_for(2, 0.04, 0.002, None, 0.3, None, model=model)
                r = dataclasses.replace(r, attack=dataclasses.replace(r.attack, seed=seed), source=Source(
                    kind="random" if source == "random" else "shards", location=source, images=100, used=100))
                rows.append(r.row(sweep="s", trial_id=f"{model[5]}-{source[6:8]}-{seed}"))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    lines = summary_table(table).splitlines()
    assert lines[0].split()[:7] == ["sweep", "trial_id", "arch", "model", "source", "seed", "source_kind"]
    cells = {tuple(line.split()[3:6]) for line in lines[2:]}
    assert cells == {(f"{m}/models/m.pt", s, str(seed)) for m in "ab" for s in ("imagenet/shards", "flickr/shards", "random")
                     for seed in (0, 1)}
    over = summary_table(over_seeds(table)).splitlines()
    assert over[0].split()[:5] == ["sweep", "arch", "model", "source", "source_kind"] and len(over) == 2 + 6
    # each path by its own fewest parts: a third model named apart by its file alone is not given its folders
    assert short_names("model", ["runs/a/models/m.pt", "runs/b/models/m.pt", "runs/a/models/n.pt", "random"]) == {
        "runs/a/models/m.pt": "a/models/m.pt", "runs/b/models/m.pt": "b/models/m.pt", "runs/a/models/n.pt": "n.pt",
        "random": "random"}
    # one shard location beside the random control: the kind says which, so no source column
    one = pa.Table.from_pylist([r for r in rows if "flickr" not in r["source"] and r["model"].startswith("runs/a")], schema=SCHEMA)
    assert summary_table(one).splitlines()[0].split()[:6] == ["sweep", "trial_id", "arch", "seed", "source_kind", "method"]


def test_created_at_is_utc_ms(tmp_path: Path) -> None:
    row = make_rows()[0]
    from datetime import timedelta

    row["created_at"] = datetime(2024, 5, 6, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    write_rows(tmp_path / "r", [row])
    back = read_results(tmp_path / "r")["created_at"][0].as_py()
    assert back == datetime(2024, 5, 6, 7, 30, 0, 123000, tzinfo=timezone.utc)


def test_every_common_reader_opens_a_results_location_with_default_arguments(tmp_path: Path) -> None:
    """pandas, pyarrow.parquet, pyarrow datasets, DuckDB, Polars and Ray Data read the location as it is and get one
    string ``sweep`` column (version 2's ``sweep=<name>`` folders made pandas and pyarrow.parquet fail with
    "Unable to merge: Field sweep has incompatible types")."""
    import duckdb
    import pandas as pd
    import polars as pl
    import ray

    loc = tmp_path / "r"
    rows = make_rows()
    write_rows(loc, rows)
    want = sorted((r["sweep"], r["trial_id"]) for r in rows)

    def pairs(sweeps, trials) -> list[tuple[str, str]]:
        return sorted(zip(map(str, sweeps), map(str, trials)))

    frame = pd.read_parquet(loc)
    assert list(frame.columns).count("sweep") == 1 and pairs(frame["sweep"], frame["trial_id"]) == want
    table = pq.read_table(loc)
    assert table.schema.field("sweep").type == pa.string() and pairs(table["sweep"].to_pylist(), table["trial_id"].to_pylist()) == want
    dataset = ds.dataset(loc).to_table()
    assert dataset.column_names.count("sweep") == 1 and pairs(dataset["sweep"].to_pylist(), dataset["trial_id"].to_pylist()) == want
    duck = duckdb.sql(f"SELECT sweep, trial_id FROM read_parquet('{loc}/**/*.parquet')").fetchall()
    assert sorted(duck) == want
    polars = pl.read_parquet(f"{loc}/**/*.parquet")
    assert polars.columns.count("sweep") == 1 and pairs(polars["sweep"], polars["trial_id"]) == want
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        data = ray.data.read_parquet(str(loc)).select_columns(["sweep", "trial_id"]).take_all()
    finally:
        if started:
            ray.shutdown()
    assert sorted((d["sweep"], d["trial_id"]) for d in data) == want


def test_a_version_2_location_is_still_read_and_never_written_into(tmp_path: Path) -> None:
    """Version 2 put each sweep in a ``sweep=<name>`` folder, with the same columns: raylab still reads it."""
    loc = tmp_path / "v2"
    rows = make_rows()
    for r in rows:
        folder = loc / f"sweep={r['sweep']}"
        folder.mkdir(parents=True, exist_ok=True)
        v2 = pa.schema([f for f in SCHEMA if f.name not in ("balanced_accuracy", "majority_accuracy")])
        pq.write_table(pa.Table.from_pylist([dict(r, schema_version=2)], schema=v2), folder / f"trial-{r['trial_id']}.parquet")
    (loc / "_schema.json").write_text(json.dumps({"schema_version": 2, "fields": []}))
    table = read_results(loc)
    assert table.num_rows == len(rows) and set(table["schema_version"].to_pylist()) == {2}
    assert table.schema == SCHEMA and set(table["majority_accuracy"].to_pylist()) == {None}  # a column v2 lacked
    assert read_results(loc, filters={"sweep": "grid-b"}).num_rows == sum(r["sweep"] == "grid-b" for r in rows)
    with pytest.raises(InputError, match="holds results of schema version 2; this raylab writes version 3 .*new location"):
        write_rows(loc, rows[:1])


def test_an_axis_without_a_plot_is_said_to_be_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raylab.cli import main

    write_rows(str(tmp_path / "results"), make_rows())
    assert main(["results", str(tmp_path / "results"), "--x", "eps"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "note: --x is ignored: it is the axis of --plot, and no --plot was given"
    assert "grid-a" in out  # the table is still printed
    assert main(["results", str(tmp_path / "results")]) == 0
    assert "note:" not in capsys.readouterr().out
