import os

import numpy as np

from timetuning.report import figures, report
from timetuning.report.evaluation_report import (
    set_section,
    starting_model_warning,
    training_rows,
    training_story,
    verdict_paragraphs,
)


def _summary(mean, std=0.01):
    return {"mean": mean, "std": std, "per_seed": [mean]}


def _doc():
    d = {"delta": 0.06, "ci_low": 0.02, "ci_high": 0.1, "confidence": 0.95, "samples": 100, "seed_std": 0.01}
    return {
        "set": "d", "classes": ["bg", "obj"], "scored_on": "val", "fitted_on": "train", "image_set": False,
        "protocol": {"features": "f", "reduction": "r", "cluster_eval_size": 64, "dataset_eval_size": 112,
                     "clustering": "c", "k": "k", "matching": "m", "miou": "i",
                     "kmeans": {"backend": "b", "iterations": 50, "restarts": 5, "points_per_centroid": 256,
                                "switches": "none"},
                     "linear": "l", "hummingbird": "h", "seeds": [0], "bootstrap": "bs",
                     "variants": {"timet": "t", "l2_no_pca": "v"}},
        "models": {
            "start": {"protocols": {"cluster_per_clip": _summary(0.40),
                                    "linear": {**_summary(0.5), "per_class_iou": [0.9, None],
                                               "confusion": [[9, 1], [3, 1]]}},
                      "variants": {}, "not_applicable": {"hummingbird": "no train split"},
                      "facts": {"videos": 3, "frames": 12, "all_background_miou": 0.3}},
            "timetuned": {"protocols": {"cluster_per_clip": _summary(0.46),
                                        "linear": {**_summary(0.55), "per_class_iou": [0.9, 0.2],
                                                   "confusion": [[9, 1], [2, 2]]}},
                          "variants": {}, "not_applicable": {"hummingbird": "no train split"},
                          "facts": {"videos": 3, "frames": 12, "all_background_miou": 0.3}},
        },
        "comparisons": {"timetuned": {
            "baseline": "start",
            "deltas": {"cluster_per_clip": d, "linear": {**d, "delta": 0.05, "ci_low": -0.01}},
            "robustness": {"cluster_per_clip": {"l2_no_pca": {**d, "delta": -0.01}}},
            "verdicts": {"cluster_per_clip": {"robust": False, "disagreeing_variants": ["l2_no_pca"],
                                              "text": "not robust: ... l2_no_pca -1.0"},
                         "linear": {"robust": False, "disagreeing_variants": [], "text": "interval includes zero"}},
        }},
    }


def test_metrics_are_x100_with_deltas_intervals_robustness_and_baseline():
    m = report.metrics_document({"d": _doc()})
    assert m["start"]["d"] == {"cluster_per_clip": 40.0, "linear": 50.0}
    assert m["delta"]["d"]["cluster_per_clip"] == 6.0 and m["delta_ci_low"]["d"]["linear"] == -1.0
    assert m["delta_robustness"]["d"]["cluster_per_clip"] == {"l2_no_pca": -1.0}
    assert m["baseline_all_background"]["d"] == 30.0 and m["seed_std"]["timetuned"]["d"]["linear"] == 1.0


def test_main_table_has_interval_seed_std_verdict_and_not_applicable_rows():
    rows = report.main_table(_doc(), "start", "timetuned")
    assert rows[0] == ["protocol", "start", "timetuned", "delta", "95% interval", "seed std (start / timetuned)",
                       "verdict"]
    clip = next(r for r in rows if r[0] == "Clustering per clip")
    assert clip == ["Clustering per clip", "40.0", "46.0", "+6.0", "+2.0 to +10.0", "1.0 / 1.0", "not robust"]
    hb = next(r for r in rows if r[0] == "Hummingbird retrieval")
    assert hb[1:4] == ["n/a", "n/a", "n/a"] and hb[-1] == "no train split"
    robust = report.robustness_table(_doc(), "timetuned")
    assert robust[1][-1] == "no: l2_no_pca" and robust[1][2].startswith("-1.0")


def test_verdict_sentences_and_the_starting_model_warning():
    lines = verdict_paragraphs("d", _doc(), "timetuned")
    assert lines[0] == "Verdict: time-tuning does not robustly help on any headline protocol of d."
    assert any("l2_no_pca -1.0" in line for line in lines)
    assert "STARTING model" in starting_model_warning({"best_step": 0, "steps": 200})
    assert starting_model_warning({"best_step": 75, "steps": 200, "val_every": 25}) is None
    assert "fewer than val_every" in starting_model_warning({"best_step": 5, "steps": 5, "val_every": 25})


def test_report_files_figures_and_captions(tmp_path):
    sections = set_section("d", _doc(), "start", "timetuned", [], {})
    report.write_report(tmp_path, "t", [report.Section("Summary", ["intro"], warning="careful")] + sections)
    html = (tmp_path / "report.html").read_text()
    assert 'src="figures/d_confusion_linear.png"' in html and "data:image" not in html  # a small page
    assert html.count("<table>") >= 3 and 'class="warning"' in html
    md = (tmp_path / "report.md").read_text()
    assert "![d: linear-probe confusion matrices" in md and (tmp_path / "figures/d_confusion_linear.png").is_file()
    assert "**Warning:** careful" in md


def test_overlay_leaves_background_unpainted_and_segmentation_has_a_legend():
    frame = np.full((4, 4, 3), 100, np.uint8)
    labels = np.array([[0, 1], [255, 2]])
    out = figures.overlay(frame, labels)
    assert (out[:2, :2] == 100).all() and (out[2:, :2] == 100).all()
    assert not (out[:2, 2:] == 100).all()
    png = figures.segmentation_png(np.stack([frame, frame]), np.stack([labels, labels]), {"m": np.stack([labels] * 2)},
                                   ["bg", "a", "b"], "title")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_summary_is_a_rounded_table_in_reading_order():
    summary = {"val_miou_best": 0.4780296761795163, "steps": 200, "final_loss": 1.7897965908050537,
               "exported": "start", "warning": "no trained step beat the starting weights", "val_set": None}
    assert training_rows(summary) == [["fact", "value"], ["steps", "200"], ["final loss", "1.790"],
                                      ["best validation mIoU", "47.8"], ["exported weights", "start"]]


def _log(val: dict[int, tuple[float, float, float]], steps: int = 20) -> list[dict[str, str]]:
    """train_log.csv rows: per step 40 prototypes used early and 12 late, perplexity 30 then 10, agreement 0.2
    then 0.6; validations at the given steps as (mIoU, forwarder J&F, cosine)."""
    rows = []
    for step in range(steps + 1):
        row = {"step": str(step)}
        if step:
            late = step > steps - 10
            row |= {"loss": "1.0", "prototypes_used": "12" if late else "40",
                    "target_perplexity": "10" if late else "30", "agreement": "0.6" if late else "0.2"}
        if step in val:
            miou, jf, cos = val[step]
            row |= {"val_miou": str(miou), "forwarder_jf": str(jf), "feature_cosine": str(cos)}
        rows.append(row)
    return rows


def test_the_training_story_follows_from_the_log():
    rose = training_story(_log({0: (0.40, 0.60, 1.0), 10: (0.43, 0.61, 0.99), 20: (0.42, 0.55, 0.95)}))
    assert rose[0] == ("Selection rose from 40.0 at step 0 to 43.0 at step 10 (the exported step; 42.0-43.0 over "
                       "steps 10-20).")
    assert rose[1] == ("Targets: 12 prototypes were the target of some patch per step at the end, perplexity 10.0, so "
                       "the targets did not collapse. The student's argmax matched 60% of its targets at the end (20% "
                       "over the first 10 steps).")
    assert rose[2] == ("Correspondences weakened: the Feature-Forwarder's J&F on the selection clips went from 60.0 to "
                       "55.0 (-5.0) at step 20. The features moved: their mean cosine to the starting features is "
                       "0.950 there.")
    fell = training_story(_log({0: (0.45, 0.60, 1.0), 10: (0.44, 0.595, 0.99), 20: (0.43, 0.60, 0.99)}))
    assert fell[0] == ("Selection did not rise above the start: 45.0 at step 0, 43.0-44.0 over steps 10-20; the "
                       "starting model is exported.")
    assert fell[2].startswith("Correspondences held") and "barely moved" in fell[2]
    assert training_story(_log({0: (0.45, 0.6, 1.0)})) == []  # no trained step validated: nothing to say


FIVE = {"dino": 0.40, "timetuned": 0.43, "timet": 0.46, "leopart": 0.385, "neco": 0.50}


def _five_model_doc():
    """DINO as the reference and four models compared with it; every delta is the plain difference of means with
    an interval of +-0.02 around it, robust when it excludes zero."""
    doc = _doc()
    start = doc["models"]["start"]
    doc["models"] = {m: {**start, "protocols": {"cluster_per_clip": _summary(v),
                                                "linear": {**_summary(v + 0.1), "per_class_iou": [0.9, v],
                                                           "confusion": [[9, 1], [3, 1]]}}}
                     for m, v in FIVE.items()}
    doc["comparisons"] = {}
    for m, v in FIVE.items():
        if m == "dino":
            continue
        d = {"delta": v - FIVE["dino"], "ci_low": v - FIVE["dino"] - 0.02, "ci_high": v - FIVE["dino"] + 0.02,
             "confidence": 0.95, "samples": 100, "seed_std": 0.01}
        robust = d["ci_low"] > 0 or d["ci_high"] < 0
        doc["comparisons"][m] = {
            "baseline": "dino", "deltas": {"cluster_per_clip": d, "linear": d},
            "robustness": {"cluster_per_clip": {"l2_no_pca": d}},
            "verdicts": {p: {"robust": robust, "disagreeing_variants": [], "text": "t"}
                         for p in ("cluster_per_clip", "linear")}}
    return doc


def test_five_models_side_by_side_with_deltas_against_the_reference():
    doc = _five_model_doc()
    rows = report.models_table(doc, "dino")
    assert rows[0] == ["protocol", "dino", "timetuned (delta [95% interval])", "timet (delta [95% interval])",
                       "leopart (delta [95% interval])", "neco (delta [95% interval])"]
    clip = next(r for r in rows if r[0] == "Clustering per clip")
    assert clip == ["Clustering per clip", "40.0", "43.0 (+3.0 [+1.0, +5.0])*", "46.0 (+6.0 [+4.0, +8.0])*",
                    "38.5 (-1.5 [-3.5, +0.5])", "50.0 (+10.0 [+8.0, +12.0])*"]
    assert next(r for r in rows if r[0] == "Hummingbird retrieval")[1:] == ["n/a"] * 5
    m = report.metrics_document({"d": doc})
    assert m["delta"]["d"]["cluster_per_clip"] == 3.0 and m["delta_neco"]["d"]["linear"] == 10.0
    assert m["delta_leopart_ci_high"]["d"]["cluster_per_clip"] == 0.5 and m["timet"]["d"]["linear"] == 56.0
    head = set_section("d", doc, "dino", "timetuned", [], {})[0]
    captions = [c for c, _ in head.tables]
    assert sum(c.startswith("Every model side by side") for c in captions) == 1
    assert [c.split(":")[0] for c in captions if c.startswith("Robustness")] == [
        f"Robustness, {m} minus dino" for m in ("timetuned", "timet", "leopart", "neco")]
    assert [name for name, _, _ in head.figures] == ["d_deltas.png"]


def test_a_five_model_report_reads_in_a_real_browser(tmp_path):
    """The 5-model report as a reader opens it: the side-by-side table shows every model, and nothing runs off
    the page (wide tables scroll inside their own box). The screenshot stays in the test's folder."""
    from tests.browser import CHROMIUM, sync_playwright_or_skip

    sync_playwright = sync_playwright_or_skip()
    sections = set_section("d", _five_model_doc(), "dino", "timetuned", [], {})
    report.write_report(tmp_path, "five models", [report.Section("Summary", ["intro"])] + sections)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((tmp_path / "report.html").as_uri())
        table = page.locator("xpath=//p[em[starts-with(., 'Every model side by side')]]/following-sibling::div[1]")
        headers = table.locator("th").all_inner_texts()
        assert headers[1:] == ["dino"] + [f"{m} (delta [95% interval])" for m in ("timetuned", "timet", "leopart",
                                                                                 "neco")]
        assert "50.0 (+10.0 [+8.0, +12.0])*" in table.inner_text()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        image = page.locator("img[alt^='d: every delta']")
        assert image.evaluate("i => i.complete && i.naturalWidth > 0")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()


def test_the_report_says_which_part_of_each_checkpoint_was_read():
    from timetuning.report.evaluation_report import weights_paragraphs

    doc = _doc()
    doc["models"]["start"]["facts"] = {**doc["models"]["start"]["facts"], "weights_source": {
        "weights": "models/custom/TimeT.pth", "layout": "timet", "part": "student", "container": None,
        "prefix": "feature_extractor.backbone.", "tensors": 150, "detected": True}}
    doc["models"]["timetuned"]["facts"] = {**doc["models"]["timetuned"]["facts"], "weights_source": {
        "weights": "package:efficientnet_lite0", "layout": None}}
    assert weights_paragraphs(doc) == [
        "Weights: start: models/custom/TimeT.pth, layout timet (detected), the student: 150 tensors from "
        "feature_extractor.backbone.; timetuned: package:efficientnet_lite0."]


def _image_set_doc():
    """A labelme-style VOC set: only a val split of 5 frames of one video (each image its own unit), classes
    `_background_` and `cup`: clustering ran, the linear probe and retrieval could not (no train split)."""
    d = {"delta": 0.04, "ci_low": 0.01, "ci_high": 0.07, "confidence": 0.95, "samples": 1000, "seed_std": 0.01}
    no_train = "the set has no train split to fit on"
    no_time = "single-frame clips (an image set): no time"
    na = {"linear": no_train, "hummingbird": no_train, "cluster_per_clip": no_time,
          "jf_mean": "single-frame clips (an image set): nothing to propagate"}
    facts = {"videos": 5, "frames": 5, "clips": 5, "all_background_miou": 0.35}

    def model(v):
        return {"protocols": {"cluster_per_frame": _summary(v),
                              "cluster_per_dataset": {**_summary(v - 0.05), "per_class_iou": [0.8, v]}},
                "variants": {}, "not_applicable": na, "facts": facts}

    doc = _doc()
    doc.update(set="frames", classes=["_background_", "cup"], image_set=True, fitted_on=None,
               models={"start": model(0.40), "timetuned": model(0.44)})
    doc["comparisons"] = {"timetuned": {
        "baseline": "start", "deltas": {"cluster_per_frame": d, "cluster_per_dataset": d},
        "robustness": {}, "verdicts": {p: {"robust": True, "disagreeing_variants": [], "text": "helps"}
                                       for p in ("cluster_per_frame", "cluster_per_dataset")},
        "bootstrap": {"unit": "video", "samples": 1000, "confidence": 0.95, "seed": 0, "videos": 5}}}
    return doc


def _image_clips():
    from timetuning.data.eval_shards import EvalClip

    frame = np.full((1, 16, 16, 3), 120, np.uint8)
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 4:12, 4:12] = 1
    return [EvalClip(f"frame_{i:05d}", f"frame_{i:05d}", frame, mask) for i in range(2)]


def _image_examples():
    labels = np.zeros((1, 16, 16), np.uint8)
    labels[0, 5:12, 5:12] = 1
    return {m: {f"cluster__{i}": labels for i in range(2)} for m in ("start", "timetuned")}


def test_an_image_set_without_a_train_split_names_only_what_ran_and_what_was_resampled():
    from timetuning.report.evaluation_report import per_class_rows

    doc = _image_set_doc()
    head, details = set_section("frames", doc, "start", "timetuned", _image_clips(), _image_examples())
    main_caption = head.tables[0][0]
    assert "95% bootstrap interval over the 5 scored images;" in main_caption
    assert "The interval resamples the 5 scored images with both models fixed" in main_caption
    assert "video" not in main_caption.split("training")[0]  # no "over videos" for images
    text = " ".join(details.paragraphs)
    assert "Intervals: 1000 resamples of the 5 scored images, paired" in text and "of videos" not in text
    assert "The linear probe and Hummingbird retrieval: not run (the set has no train split to fit on)." in text
    assert "Linear probe: l." not in text and "Hummingbird: h." not in text
    captions = {name: caption for name, _, caption in details.figures}
    assert set(captions) == {"frames_per_class_iou.png", "frames_clip0.png", "frames_clip1.png"}  # no confusion
    assert captions["frames_per_class_iou.png"] == ("frames: IoU per class (x100) of each model for per-dataset "
                                                    "clustering.")
    assert captions["frames_clip0.png"] == ("frames, image frame_00000: the image, ground truth, per-frame clusters "
                                            "matched to classes; colours = classes (legend), background unpainted.")
    assert not any("linear" in c or "retrieval" in c for c in captions.values())
    per_class = details.tables[0][1]
    assert [r[0] for r in per_class[1:]] == ["background", "cup"]
    assert [r[3] for r in per_class_rows("frames", doc)[1:]] == ["background", "cup", "background", "cup"]


def test_a_video_set_says_videos_and_names_the_linear_probe_where_it_ran():
    from timetuning.report.evaluation_report import interval_statement, resampled_units

    doc = _doc()
    doc["comparisons"]["timetuned"]["bootstrap"] = {"unit": "video", "samples": 100, "confidence": 0.9,
                                                    "videos": 3}
    assert resampled_units(doc) == "the 3 scored videos"
    assert interval_statement(doc).startswith("100 resamples of the 3 scored videos, paired")
    ex = {"timetuned": {"cluster__0": np.zeros((1, 16, 16), np.uint8), "linear__0": np.zeros((1, 16, 16), np.uint8)}}
    clip = _image_clips()[:1]
    _, details = set_section("d", doc, "start", "timetuned", clip, ex)
    caption = next(c for name, _, c in details.figures if name == "d_clip0.png")
    assert "per-clip clusters matched to classes and the linear probe's prediction" in caption
    assert "Linear probe: l." in " ".join(details.paragraphs)


def test_an_image_set_report_reads_in_a_real_browser(tmp_path):
    """The image-set report as a reader opens it: `background` in the legend's table, no probe or retrieval
    promised in a caption. The screenshot stays in the test's folder."""
    from tests.browser import CHROMIUM, sync_playwright_or_skip

    sync_playwright = sync_playwright_or_skip()
    sections = set_section("frames", _image_set_doc(), "start", "timetuned", _image_clips(), _image_examples())
    report.write_report(tmp_path, "image set", [report.Section("Summary", ["intro"])] + sections)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((tmp_path / "report.html").as_uri())
        body = page.locator("body").inner_text()
        assert "_background_" not in body and "resamples of videos" not in body
        per_class = page.locator("xpath=//p[em[starts-with(., 'IoU per class')]]/following-sibling::div[1]")
        assert per_class.locator("td:first-child").all_inner_texts() == ["background", "cup"]
        captions = page.locator("figcaption").all_inner_texts()
        assert captions and not any("linear probe" in c or "retrieval" in c for c in captions)
        assert all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in page.locator("img").all())
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        if os.environ.get("TIMETUNING_SCREENSHOTS"):
            page.screenshot(path=os.environ["TIMETUNING_SCREENSHOTS"] + "/image_set_report.png", full_page=True)
        browser.close()
