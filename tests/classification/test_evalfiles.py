"""Tests for pipeline.classification.evalfiles: the evaluation files' layout, by kind."""

from pathlib import Path

from pipeline.classification.evalfiles import KINDS, EvalFiles


def test_a_runs_files_go_one_per_kind_folder():
    files = EvalFiles(Path("eval") / "svm", "conv_pw_3_relu")
    assert files.metrics == Path("eval/svm/metrics/conv_pw_3_relu.json")
    assert files.confusion_png == Path("eval/svm/confusion/conv_pw_3_relu.png")
    assert files.named() == {
        "metrics.json": files.metrics,
        "confusion.json": Path("eval/svm/confusion/conv_pw_3_relu.json"),
        "per_class.json": Path("eval/svm/per_class/conv_pw_3_relu.json"),
        "learning_curve.json": Path("eval/svm/learning_curve/conv_pw_3_relu.json"),
        "confusion.png": files.confusion_png,
    }
    assert {path.parent.name for path in files.named().values()} == set(KINDS)
