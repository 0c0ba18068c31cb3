import numpy as np
import pytest

from timetuning.eval.metrics import (
    confusion_matrix,
    hungarian_miou,
    mean_iou,
    overclustering_miou,
    per_class_iou,
    remap_confusion,
)


def reference_miou(pred, target, num_classes, ignore=255):
    """Straightforward per-class loop over pixel sets: the definition, written plainly."""
    ious = []
    for c in range(num_classes):
        t = (target == c) & (target != ignore)
        if not t.any():
            continue
        p = (pred == c) & (target != ignore)
        ious.append((p & t).sum() / (p | t).sum())
    return float(np.mean(ious))


def test_perfect_and_permuted_clusters():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    assert hungarian_miou(target.clip(0, 2), target, 3)[0] == pytest.approx(1.0)
    permuted = np.array([[2, 2, 0, 0], [1, 1, 1, 0]])  # cluster ids are arbitrary; the ignore pixel is anything
    assert hungarian_miou(permuted, target, 3)[0] == pytest.approx(1.0)


def test_known_value_with_ignore_and_absent_prediction():
    target = np.array([0, 0, 0, 1, 1, 255, 255, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 0])  # class 2 never predicted
    conf = confusion_matrix(pred, target, 3, 3)
    assert conf.sum() == 6  # ignore pixels dropped
    iou = per_class_iou(conf)
    # class 0: tp 2, fp 1 (the class-2 pixel), fn 1 -> 2/4; class 1: tp 2, fp 1 (a class-0 pixel) -> 2/3
    assert iou[0] == pytest.approx(2 / 4) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert mean_iou(conf) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert mean_iou(conf) == pytest.approx(reference_miou(pred, target, 3))


def test_random_cases_agree_with_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.integers(0, 4, 500)
        target[rng.random(500) < 0.1] = 255
        pred = rng.integers(0, 4, 500)
        conf = confusion_matrix(pred, target, 4, 4)
        assert mean_iou(conf) == pytest.approx(reference_miou(pred, target, 4))


def test_more_clusters_than_classes_unmatched_go_to_background():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([5, 4, 1, 1, 3, 3])  # clusters 4 and 5 split the background; one of them is unmatched
    miou, per_class = hungarian_miou(pred, target, 3, num_clusters=6)
    assert per_class[1] == 1.0 and per_class[2] == 1.0 and per_class[0] == pytest.approx(1.0)
    miou_over, _ = overclustering_miou(pred, target, 3, 6)
    assert miou_over == pytest.approx(1.0)


def test_many_to_one_uses_precision():
    target = np.array([1, 1, 1, 1, 0, 0])
    pred = np.array([0, 0, 1, 1, 1, 2])  # cluster 1 is 2/3 class 1 -> class 1
    conf = confusion_matrix(pred, target, 3, 2)
    folded = remap_confusion(conf, conf.argmax(0))
    assert folded.tolist() == [[1, 1], [0, 4]]
    assert overclustering_miou(pred, target, 2, 3)[0] == pytest.approx((1 / 2 + 4 / 5) / 2)


def test_bad_ids_raise():
    with pytest.raises(ValueError, match="predicted ids"):
        confusion_matrix(np.array([3]), np.array([0]), 3, 3)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3, 3)


def _spelled_out_ignore_index(path) -> list[int]:
    """Lines where code compares with, assigns or counts up to a literal 255 (the mask value, not a colour)."""
    import ast

    def is_255(node) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_255(e) for e in node.elts)
        return isinstance(node, ast.Constant) and node.value == 255 and type(node.value) is int

    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            hit = any(is_255(n) for n in [node.left, *node.comparators])
        elif isinstance(node, ast.Assign):
            hit = is_255(node.value)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "range":
            hit = any(is_255(a) for a in node.args)
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return lines


def test_the_ignore_index_is_named_wherever_masks_are_read():
    """One fact: mask value 255 means "not scored" (IGNORE_INDEX, data/labels.py); every other module names it, so a
    test of a mask value reads as what it means and there is one place to look."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = {p.relative_to(root).as_posix(): lines for pkg in ("timetuning", "stages", "pipeline")
             for p in sorted((root / pkg).rglob("*.py")) if (lines := _spelled_out_ignore_index(p))}
    assert found == {"timetuning/data/labels.py": [5]}  # IGNORE_INDEX = 255 itself
