"""Eval metrics and confusion matrix on tiny fixtures computed by hand."""

from __future__ import annotations

import pytest

from dutrain.evaluate.metrics import (
    EXTRA,
    MISSED,
    by_source,
    confusion,
    confusion_labels,
    score_sample,
    source_of,
    split_metrics,
)
from dutrain.evaluate.predictions import parse_lines
from dutrain.evaluate.report import markdown_report, summary_table
from dutrain.schema import render_answer

R1 = {"degradations": []}
R2 = {"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}
R3 = {"degradations": [{"type": "haze", "params": {"beta": 1.0, "airlight": 0.8}},
                       {"type": "gaussian_noise", "params": {"sigma": 10}}]}
R4 = {"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.9}},
                       {"type": "jpeg", "params": {"quality": 50}}]}
REFS = [R1, R2, R3, R4]


def scored(preds):
    return [score_sample(f"s{i}", "test", p, r) for i, (p, r) in enumerate(zip(preds, REFS))]


def test_perfect_predictions_score_one_on_every_metric():
    m = split_metrics("test", scored([render_answer(r, "cues") for r in REFS]))
    for k in ("format_valid", "type_exact", "type_f1", "key_acc", "value_within_1_step",
              "reward/total"):
        assert m[f"test/{k}"] == 1.0, k
    assert m["test/value_nmae"] == 0.0
    assert {k for k in m if "/type_f1/" in k} == {"test/type_f1/clean", "test/type_f1/jpeg",
                                                   "test/type_f1/haze",
                                                   "test/type_f1/gaussian_noise"}
    assert all(m[k] == 1.0 for k in m if "/type_f1/" in k or "/type_recall/" in k)
    assert len([k for k in m if "/type_recall/" in k]) == 4
    assert all(m[k] == 0.0 for k in m if "/value_nmae/" in k)
    assert m["test/n"] == 4 and m["test/missing"] == 0


def test_shuffled_predictions_match_hand_computation():
    # s0 <- R2, s1 <- R4, s2 <- R1, s3 <- R3
    m = split_metrics("test", scored([render_answer(r, "x") for r in (R2, R4, R1, R3)]))
    assert m["test/format_valid"] == 1.0
    assert m["test/type_exact"] == 0.0
    # TP: jpeg (s1), haze (s3); FP: jpeg, haze, clean, gaussian_noise; FN: clean, haze, noise, jpeg
    assert m["test/type_f1"] == pytest.approx(2 * 2 / (2 * 2 + 4 + 4))
    assert m["test/type_f1/jpeg"] == pytest.approx(0.5)
    assert m["test/type_f1/haze"] == pytest.approx(0.5)
    assert m["test/type_f1/clean"] == 0.0 and m["test/type_f1/gaussian_noise"] == 0.0
    assert m["test/type_recall/jpeg"] == m["test/type_recall/haze"] == pytest.approx(0.5)
    assert m["test/type_recall/clean"] == m["test/type_recall/gaussian_noise"] == 0.0
    # strength thirds: R2 jpeg q35 strong, R4 jpeg q50 and both hazes medium, noise sigma 10 mild
    banded = {k.split("/", 1)[1]: v for k, v in m.items() if "/type_recall_" in k}
    assert banded == {"type_recall_strong/jpeg": 1.0, "type_recall_medium/jpeg": 0.0,
                      "type_recall_medium/haze": 0.5, "type_recall_mild/gaussian_noise": 0.0,
                      "type_recall_strong": 1.0, "type_recall_medium": 1 / 3,
                      "type_recall_mild": 0.0}
    assert m["test/key_acc"] == pytest.approx(0.5)
    e_q, e_b, e_a = 15 / 80, 0.2 / 2.3, 0.1 / 0.35
    assert m["test/value_nmae/jpeg.quality"] == pytest.approx(e_q)
    assert m["test/value_nmae/haze.beta"] == pytest.approx(e_b)
    assert m["test/value_nmae/haze.airlight"] == pytest.approx(e_a)
    assert m["test/value_nmae"] == pytest.approx((e_q + e_b + e_a) / 3)
    assert m["test/value_within_1_step"] == 0.0


def test_within_one_step_and_missing_predictions():
    near = render_answer({"degradations": [{"type": "jpeg", "params": {"quality": 36}}]}, "x")
    far = render_answer({"degradations": [{"type": "jpeg", "params": {"quality": 38}}]}, "x")
    rows = [score_sample("a", "ood", near, R2), score_sample("b", "ood", far, R2),
            score_sample("c", "ood", None, R2)]
    m = split_metrics("ood", rows)
    assert m["ood/value_within_1_step"] == 0.5
    assert m["ood/missing"] == 1 and m["ood/format_valid"] == pytest.approx(2 / 3)
    assert m["ood/value_nmae"] == pytest.approx((1 / 80 + 3 / 80) / 2)


def test_confusion_by_hand():
    rows_l, cols_l = confusion_labels()
    cm = confusion(scored([render_answer(r, "x") for r in (R2, R4, R1, R3)]))
    got = {(rows_l[i], cols_l[j]): v for i, r in enumerate(cm) for j, v in enumerate(r) if v}
    # haze+jpeg answered haze+gaussian_noise: the one unpaired true type (jpeg) is read as the
    # one unpaired predicted type, across stages
    assert got == {("clean", "jpeg"): 1, ("jpeg", "jpeg"): 1, (EXTRA, "haze"): 1,
                   ("haze", "clean"): 1, ("gaussian_noise", "clean"): 1, ("haze", "haze"): 1,
                   ("jpeg", "gaussian_noise"): 1}
    blur = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.0}}]}
    defocus = render_answer(
        {"degradations": [{"type": "defocus_blur", "params": {"radius": 2.0}}]}, "x")
    cm = confusion([score_sample("a", "t", defocus, blur), score_sample("b", "t", "garbage", R2),
                    score_sample("c", "t", "garbage", R1)])
    got = {(rows_l[i], cols_l[j]): v for i, r in enumerate(cm) for j, v in enumerate(r) if v}
    assert got == {("gaussian_blur", "defocus_blur"): 1, ("jpeg", MISSED): 1, ("clean", MISSED): 1}
    # one degradation per image (the demo): a wrong type is true → predicted, whatever the stage
    down = {"degradations": [{"type": "downsample", "params": {"scale": 0.5}}]}
    dark = render_answer({"degradations": [{"type": "low_light",
                                            "params": {"exposure": 0.3, "gamma": 2.0}}]}, "x")
    noisy_hazy = render_answer(R3, "x")  # two types named for one: both in that row, no extra
    cm = confusion([score_sample("a", "t", dark, down), score_sample("b", "t", noisy_hazy, R2)])
    got = {(rows_l[i], cols_l[j]): v for i, r in enumerate(cm) for j, v in enumerate(r) if v}
    assert got == {("downsample", "low_light"): 1, ("jpeg", "haze"): 1,
                   ("jpeg", "gaussian_noise"): 1}
    # two true types unpaired and a third predicted: which was read as which is unknown
    cm = confusion([score_sample("c", "t", render_answer(R2, "x"), R3)])
    got = {(rows_l[i], cols_l[j]): v for i, r in enumerate(cm) for j, v in enumerate(r) if v}
    assert got == {("haze", MISSED): 1, ("gaussian_noise", MISSED): 1, (EXTRA, "jpeg"): 1}


def test_predictions_lines_never_fail():
    p = parse_lines(['{"sample_id": "a", "completion": "x"}', "", "not json",
                     '{"sample_id": "b"}', '{"completion": "y"}', "[1]",
                     '{"sample_id": "a", "completion": "again"}'])
    assert p.completions == {"a": "x", "b": None}
    assert [n for n, _ in p.malformed] == [3, 4, 5, 6]
    assert p.duplicates == ["a"]


def test_report_and_summary_show_the_numbers():
    s = scored([render_answer(r, "x") for r in (R2, R4, R1, R3)])
    m = split_metrics("test", s)
    table = summary_table(m, ["test"], "sys")
    assert "0.333" in table and "test" in table
    md = markdown_report("sys", "/d", ["test"], m, {"test": confusion(s)}, ["a note"], {})
    assert "| jpeg.quality | 0.188 |" in md and "- a note" in md and "missed" in md
    assert "| haze | – | 0.50 | – |" in md and "| jpeg | – | 0.00 | 1.00 |" in md
    assert "| all types | 0.00 | 0.33 | 1.00 |" in md


def test_by_source_groups_sample_ids_by_their_image():
    assert source_of("DIV2K/0001.png:3:1") == "DIV2K/0001.png" and source_of("a:b:0:2") == "a:b"
    perfect = [render_answer(r, "x") for r in REFS]
    preds = [perfect[0], perfect[1], perfect[0], perfect[3]]
    rows = [score_sample(f"{src}:{i}:0", "test", p, r)
            for i, (src, p, r) in enumerate(zip(["cat", "cat", "cell", "cell"], preds, REFS))]
    per = by_source(rows)
    assert per["cat"]["n"] == 2 and per["cat"]["type_exact"] == 1.0
    assert per["cat"]["value_nmae"] == 0.0
    # cell: R3 answered clean (wrong, no matched key), R4 answered exactly
    assert per["cell"] == {"n": 2, "type_exact": 0.5, "value_nmae": 0.0}
    md = markdown_report("sys", "/d", ["test"], split_metrics("test", rows), {}, [], {},
                         {"test": per})
    table = md.split("## Per source image (test)")[1]
    assert table.index("| cell | 2 | 0.500 |") < table.index("| cat | 2 | 1.000 | 0.000 |")


def test_visible_and_faint_split_the_degraded_samples_by_their_psnr():
    right = [render_answer(r, "x") for r in REFS]
    # s0 clean (never counted), s1 visible and right, s2 faint and right, s3 faint and wrong
    preds = [right[0], right[1], right[2], right[1]]
    psnrs = [60.0, 20.0, 35.0, 48.0]  # 35 dB itself is faint: visible means below VISIBLE_PSNR
    rows = [score_sample(f"s{i}", "test", p, r, psnr=q)
            for i, (p, r, q) in enumerate(zip(preds, REFS, psnrs))]
    m = split_metrics("test", rows)
    assert m["test/visible_share"] == pytest.approx(1 / 3)
    assert m["test/type_exact_visible"] == 1.0
    assert m["test/type_exact_faint"] == 0.5
    md = markdown_report("sys", "/d", ["test"], m, {}, [], {})
    assert "| test | 0.33 | 1.000 | 0.500 |" in md
    # without the PSNR (e.g. a predictions file scored without images) nothing is claimed
    plain = split_metrics("test", scored(preds))
    assert not any("visible" in k or "faint" in k for k in plain)
