"""scikit-learn's own estimator checks (``sklearn.utils.estimator_checks``) on every estimator of pipeline.classification.classifiers."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline.classification.classifiers import KerasHeadClassifier, SpatialPool

pytestmark = pytest.mark.slow  # scikit-learn's checks fit the Keras head about 50 times

# One epoch at a higher learning rate: enough for check_classifiers_train's accuracy bar. No check is expected to fail.
ESTIMATORS = [KerasHeadClassifier(epochs=1, learning_rate=0.01, verbose=0), SpatialPool()]


@pytest.fixture(scope="module", autouse=True)
def eager_tensorflow():
    """The checks fit the Keras head about 50 times on a few dozen rows, where tracing Keras's train step (twice per
    fit) costs more than training: run the same operations eagerly instead (half the time). test_classifiers fits it
    as it runs in the pipeline, traced."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly`:UserWarning")
@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
