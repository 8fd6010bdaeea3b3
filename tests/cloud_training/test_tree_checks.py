"""The trees' kept estimator type and lean fitted check answer exactly as scikit-learn's own."""

import numpy as np
import pytest
from sklearn.base import ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

from cloud_training.fast_paths import original_of
from cloud_training.tree_checks import kept_is_classifier, lean_is_fitted

pytestmark = pytest.mark.fast

TREES = [DecisionTreeRegressor, DecisionTreeClassifier, ExtraTreeRegressor, ExtraTreeClassifier]


def scikit_learns_is_classifier():
    return original_of("sklearn.tree._classes", "is_classifier")


def scikit_learns_check():
    return original_of("sklearn.tree._classes", "check_is_fitted")


class TreeThatClassifies(ClassifierMixin, DecisionTreeRegressor):
    pass


class TreeThatSaysItIsNotFitted(DecisionTreeRegressor):
    def __sklearn_is_fitted__(self):
        return False


def fitted(tree):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3))
    return tree.fit(x, (x[:, 0] > 0).astype(int))


@pytest.mark.parametrize("cls", TREES)
def test_each_tree_class_gets_scikit_learns_estimator_type_every_time(cls):
    is_classifier = kept_is_classifier(scikit_learns_is_classifier())

    answers = {is_classifier(cls()), is_classifier(cls(max_depth=2))}

    assert answers == {scikit_learns_is_classifier()(cls())}


def test_a_subclass_of_a_tree_is_asked_of_scikit_learn():
    is_classifier = kept_is_classifier(scikit_learns_is_classifier())
    is_classifier(DecisionTreeRegressor())

    assert is_classifier(TreeThatClassifies()) is True
    assert is_classifier(DecisionTreeRegressor()) is False


def test_a_tree_class_given_new_tags_is_asked_again(monkeypatch):
    is_classifier = kept_is_classifier(scikit_learns_is_classifier())
    assert is_classifier(DecisionTreeRegressor()) is False

    regressor_tags = DecisionTreeRegressor.__sklearn_tags__

    def classifier_tags(self):
        tags = regressor_tags(self)
        tags.estimator_type = "classifier"
        return tags

    monkeypatch.setattr(DecisionTreeRegressor, "__sklearn_tags__", classifier_tags)

    assert is_classifier(DecisionTreeRegressor()) is True


@pytest.mark.parametrize("cls", TREES)
def test_a_fitted_tree_passes_and_an_unfitted_one_gets_scikit_learns_error(cls):
    check = lean_is_fitted(scikit_learns_check())
    check(fitted(cls(random_state=0)))

    with pytest.raises(NotFittedError, match=f"This {cls.__name__} instance is not fitted yet"):
        check(cls())


def test_a_check_with_attributes_is_scikit_learns():
    check = lean_is_fitted(scikit_learns_check())

    with pytest.raises(NotFittedError, match="not ready"):
        check(fitted(DecisionTreeRegressor()), ["calibration_"], msg="%(name)s not ready")


def test_a_tree_that_says_it_is_not_fitted_is_believed():
    check = lean_is_fitted(scikit_learns_check())

    with pytest.raises(NotFittedError):
        check(fitted(TreeThatSaysItIsNotFitted()))


def test_a_class_is_refused_with_scikit_learns_error():
    check = lean_is_fitted(scikit_learns_check())

    with pytest.raises(TypeError, match="is a class, not an instance"):
        check(DecisionTreeRegressor)
