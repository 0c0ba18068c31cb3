import numpy as np

from timetuning import report

RESULTS = {
    "start": {"d": {"cluster_per_clip": {"mean": 0.40, "std": 0.01, "per_seed": [0.4]},
                    "linear": {"miou": 0.5, "per_class_iou": [0.9, None], "confusion": [[9, 1], [3, 1]]},
                    "temporal_stability_per_clip": 0.9, "scored_on": "val"}},
    "timetuned": {"d": {"cluster_per_clip": {"mean": 0.46, "std": 0.02, "per_seed": [0.46]},
                        "linear": {"miou": 0.55, "per_class_iou": [0.9, 0.2], "confusion": [[9, 1], [2, 2]]},
                        "temporal_stability_per_clip": 0.95, "scored_on": "val"}},
}


def test_flat_metrics_and_deltas():
    flat = report.flat_metrics(RESULTS)
    assert flat["start"]["d"] == {"cluster_per_clip": 0.40, "linear": 0.5, "temporal_stability_per_clip": 0.9}
    assert abs(flat["delta"]["d"]["cluster_per_clip"] - 0.06) < 1e-9


def test_tables_render_both_models_and_the_delta():
    flat = report.flat_metrics(RESULTS)
    rows = report.metrics_table(flat, "d", report.protocol_names(RESULTS))
    assert rows[0] == ["protocol", "start", "timetuned", "delta (time-tuned - start)"]
    clip = next(r for r in rows if r[0] == "Clustering per clip")
    assert clip == ["Clustering per clip", "40.0", "46.0", "+6.0"]
    md = report.markdown_table(rows)
    assert md.count("\n") == len(rows) and "| Linear probe | 50.0 | 55.0 | +5.0 |" in md
    assert "<td>+6.0</td>" in report.html_table(rows)


def test_overlay_leaves_background_unpainted():
    frame = np.full((4, 4, 3), 100, np.uint8)
    labels = np.array([[0, 1], [255, 2]])
    out = report.overlay(frame, labels)
    assert (out[:2, :2] == 100).all() and (out[2:, :2] == 100).all()
    assert not (out[:2, 2:] == 100).all()


def test_report_files(tmp_path):
    png = report.per_class_png(RESULTS, "d", ["bg", "obj"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report.write_report(tmp_path, "t", ["intro"], [("d", [["a", "b"], ["1", "2"]], [("x.png", png)])])
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert (tmp_path / "figures" / "x.png").read_bytes() == png
    assert "![x.png](figures/x.png)" in (tmp_path / "report.md").read_text()


def test_per_class_table_has_a_column_per_model_and_protocol():
    rows = report.per_class_table(RESULTS, "d", ["bg", "obj"])
    assert rows[0] == ["class", "linear start", "linear timetuned"]
    assert rows[1] == ["bg", "90.0", "90.0"] and rows[2] == ["obj", "-", "20.0"]
