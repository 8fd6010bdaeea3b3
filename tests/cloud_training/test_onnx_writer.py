"""Our ONNX writer against skl2onnx itself: the same graph for every family, and the same predictions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge

from cloud_training.device_training import to_onnx_bytes
from cloud_training.families import FLEET_FAMILIES, make_estimator
from cloud_training.onnx_writer import _float32_thresholds, onnx_graph_bytes

pytestmark = pytest.mark.fast

N_FEATURES = 4
SCALES = np.array([1.0, 10.0, 300.0, 1e-3])  # features of very different ranges, as a device's sensors are


def _fitted(family: str, seed: int) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, N_FEATURES)) * SCALES
    y = x @ (np.array([1.0, 0.2, 0.01, 900.0])) + np.sin(x[:, 0] * 3) + rng.normal(scale=0.1, size=400)
    return make_estimator(family, seed).fit(x, y), x


def _skl2onnx(model: object) -> onnx.ModelProto:
    return convert_sklearn(model, initial_types=[("input", FloatTensorType([None, N_FEATURES]))])


def _predict(blob: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x.astype(np.float32)})[0])


@pytest.mark.parametrize("family", sorted(set(FLEET_FAMILIES)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_family_is_written_node_for_node_as_skl2onnx_writes_it(family, seed):
    model, _ = _fitted(family, seed)

    ours = onnx.load_from_string(onnx_graph_bytes(model, N_FEATURES))
    theirs = _skl2onnx(model)

    assert list(ours.graph.node) == list(theirs.graph.node)
    assert list(ours.graph.input) == list(theirs.graph.input)
    assert list(ours.graph.output) == list(theirs.graph.output)
    onnx.checker.check_model(ours)


@pytest.mark.parametrize("family", ["random_forest", "gradient_boosting", "ridge"])
def test_the_written_model_predicts_bit_for_bit_what_skl2onnx_s_model_predicts_even_on_the_thresholds(family):
    model, x = _fitted(family, 7)
    probes = [x, np.random.default_rng(8).normal(size=(2000, N_FEATURES)) * SCALES]
    if hasattr(model, "estimators_"):
        # Inputs sitting exactly on each split and one float32 step either side of it.
        trees = [getattr(e, "tree_", None) or e[0].tree_ for e in np.ravel(model.estimators_)]
        for tree in trees:
            split = tree.feature >= 0
            for feature, threshold in zip(tree.feature[split], tree.threshold[split], strict=True):
                on = np.float32(threshold)
                for value in (np.nextafter(on, np.float32(-np.inf)), on, np.nextafter(on, np.float32(np.inf))):
                    row = x[:1].copy()
                    row[0, feature] = value
                    probes.append(row)
    probe = np.vstack(probes).astype(np.float32)

    ours = _predict(onnx_graph_bytes(model, N_FEATURES), probe)
    theirs = _predict(_skl2onnx(model).SerializeToString(), probe)

    assert np.array_equal(ours, theirs)
    if family != "ridge":  # trees route float32 inputs exactly as scikit-learn does
        np.testing.assert_allclose(ours[:, 0], model.predict(probe.astype(np.float64)), rtol=1e-5, atol=1e-4)


def test_a_float64_threshold_becomes_the_float32_that_splits_every_float32_input_the_same_way():
    rng = np.random.default_rng(3)
    thresholds = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-6, 6, size=500), [0.0, -0.5, 1e30]])
    written = _float32_thresholds(thresholds)
    for threshold, w in zip(thresholds, written, strict=True):
        near = np.float32(threshold)
        for x in (np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))):
            assert (np.float64(x) <= threshold) == (x <= w)


def test_an_estimator_the_writer_does_not_know_is_converted_by_skl2onnx_and_predicts_the_same():
    x = np.random.default_rng(4).normal(size=(200, N_FEATURES))
    y = x.sum(axis=1)
    for model in (
        Ridge().fit(x, y),  # no scaler in front
        GradientBoostingRegressor(loss="absolute_error", n_estimators=5).fit(x, y),
    ):
        assert onnx_graph_bytes(model, N_FEATURES) is None
        blob = to_onnx_bytes(model, N_FEATURES)
        np.testing.assert_allclose(_predict(blob, x)[:, 0], model.predict(x), rtol=1e-4, atol=1e-4)


def test_a_model_fitted_on_other_inputs_than_asked_is_not_written():
    model, _ = _fitted("gradient_boosting", 0)

    assert onnx_graph_bytes(model, N_FEATURES + 1) is None


@pytest.mark.parametrize("family", ["ridge", "gradient_boosting"])
def test_converting_the_same_model_twice_gives_the_same_bytes(family):
    model, _ = _fitted(family, 5)

    assert to_onnx_bytes(model, N_FEATURES) == to_onnx_bytes(model, N_FEATURES)
    fallback = Ridge().fit(*(_fitted("ridge", 5)[1], np.arange(400.0)))
    assert to_onnx_bytes(fallback, N_FEATURES) == to_onnx_bytes(fallback, N_FEATURES)
