"""ONNX graphs for the three model families, written with numpy instead of skl2onnx's per-node Python.

skl2onnx spends 4-6 ms converting one small device model: it rebuilds its table of every ONNX
operator version for each linear model, and walks each tree node by node. A device's whole
training costs ~60 ms, so conversion was ~8% of it. The graphs here are the ones skl2onnx 1.20
writes for these families, node for node and attribute for attribute (same operators, same
float32 values, the same threshold adjustment), which `tests/cloud_training/test_onnx_writer.py`
checks against skl2onnx itself; any other estimator is left to skl2onnx (`None` here).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "onnx_graph_bytes"]

INPUT_NAME: Final = "input"  # float32 [batch, n_features], what the edge feeds
OUTPUT_NAME: Final = "variable"  # float32 [batch, 1], skl2onnx's name for a regressor's output
_ML_DOMAIN: Final = "ai.onnx.ml"
_ML_OPSET: Final = 1  # Scaler, LinearRegressor and TreeEnsembleRegressor as skl2onnx emits them
_ONNX_OPSET: Final = 15  # no default-domain operator is used; onnxruntime 1.11+ reads this opset
_IR_VERSION: Final = 8
_GRAPH_NAME: Final = "edgefleet"  # a fixed name keeps the bytes of a retrained model the same


def onnx_graph_bytes(model: Any, n_features: int) -> bytes | None:
    """Return the serialised ONNX model of `model`, or None when it is not one of the families written here."""
    nodes = _nodes(model, n_features)
    if nodes is None:
        return None
    graph = helper.make_graph(
        nodes,
        _GRAPH_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(_ML_DOMAIN, _ML_OPSET), helper.make_opsetid("", _ONNX_OPSET)],
        producer_name="edgefleet",
        ir_version=_IR_VERSION,
    )
    return bytes(proto.SerializeToString())


def _nodes(model: Any, n_features: int) -> list[onnx.NodeProto] | None:
    """Return the graph's nodes for a supported, fitted estimator of `n_features` inputs (None: unsupported)."""
    if getattr(model, "n_features_in_", None) != n_features:
        return None
    if type(model) is Pipeline:
        return _scaled_ridge(model)
    if type(model) is GradientBoostingRegressor:
        return _gradient_boosting(model)
    if type(model) is RandomForestRegressor:
        return _random_forest(model)
    return None


def _scaled_ridge(pipeline: Pipeline) -> list[onnx.NodeProto] | None:
    """Write StandardScaler + Ridge as skl2onnx does: Scaler (offset, 1/scale), then LinearRegressor."""
    steps = [step for _, step in pipeline.steps]
    if len(steps) != 2 or type(steps[0]) is not StandardScaler or type(steps[1]) is not Ridge:
        return None
    scaler, ridge = steps
    if not (scaler.with_mean and scaler.with_std) or np.ndim(ridge.coef_) != 1:
        return None
    return [
        helper.make_node(
            "Scaler",
            [INPUT_NAME],
            ["variable1"],
            name="Scaler",
            domain=_ML_DOMAIN,
            offset=np.asarray(scaler.mean_, dtype=np.float64),
            scale=1.0 / np.asarray(scaler.scale_, dtype=np.float64),
        ),
        helper.make_node(
            "LinearRegressor",
            ["variable1"],
            [OUTPUT_NAME],
            name="LinearRegressor",
            domain=_ML_DOMAIN,
            coefficients=np.asarray(ridge.coef_).astype(np.float32).ravel(),
            intercepts=np.array([ridge.intercept_], dtype=np.float32).ravel(),
        ),
    ]


def _gradient_boosting(model: GradientBoostingRegressor) -> list[onnx.NodeProto] | None:
    """Write the boosted trees, each leaf scaled by the learning rate, on the initial estimator's constant."""
    constant = getattr(getattr(model, "init_", None), "constant_", None)
    if model.init is not None or model.loss != "squared_error" or constant is None:
        return None
    trees = [stage[0].tree_ for stage in model.estimators_]
    base_values = np.array([float(x) for x in np.ravel(constant)], dtype=np.float32)
    return [_tree_ensemble(trees, float(model.learning_rate), base_values)]


def _random_forest(model: RandomForestRegressor) -> list[onnx.NodeProto] | None:
    """Write the forest's trees, each leaf weighted 1/n_trees so their sum is the mean."""
    if model.n_outputs_ != 1:
        return None
    trees = [estimator.tree_ for estimator in model.estimators_]
    return [_tree_ensemble(trees, 1.0 / len(trees), None)]


def _tree_ensemble(trees: list[Any], tree_weight: float, base_values: np.ndarray | None) -> onnx.NodeProto:
    """Return one TreeEnsembleRegressor node of `trees` (sklearn `Tree` objects), as skl2onnx lays it out."""
    counts = np.array([tree.node_count for tree in trees], dtype=np.int64)
    starts = np.cumsum(counts) - counts
    tree_ids = np.repeat(np.arange(len(trees), dtype=np.int64), counts)
    node_ids = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    left = np.concatenate([tree.children_left for tree in trees]).astype(np.int64)
    right = np.concatenate([tree.children_right for tree in trees]).astype(np.int64)
    branch = (left > node_ids) | (right > node_ids)  # a leaf's children are -1
    thresholds = _float32_thresholds(np.concatenate([tree.threshold for tree in trees]))
    leaves = ~branch
    # A leaf's value times the tree's weight in float64, then float32: skl2onnx's two roundings.
    leaf_values = np.concatenate([tree.value.reshape(-1) for tree in trees])[leaves] * tree_weight
    attributes: dict[str, Any] = {
        "n_targets": 1,
        "nodes_falsenodeids": np.where(branch, right, 0),
        "nodes_featureids": np.where(branch, np.concatenate([tree.feature for tree in trees]).astype(np.int64), 0),
        "nodes_hitrates": np.ones(node_ids.size, dtype=np.float32),
        "nodes_missing_value_tracks_true": np.zeros(node_ids.size, dtype=np.int64),
        "nodes_modes": [b"BRANCH_LEQ" if is_branch else b"LEAF" for is_branch in branch.tolist()],
        "nodes_nodeids": node_ids,
        "nodes_treeids": tree_ids,
        "nodes_truenodeids": np.where(branch, left, 0),
        "nodes_values": np.where(branch, thresholds, np.float32(0.0)).astype(np.float32),
        "post_transform": "NONE",
        "target_ids": np.zeros(int(leaves.sum()), dtype=np.int64),
        "target_nodeids": node_ids[leaves],
        "target_treeids": tree_ids[leaves],
        "target_weights": leaf_values.astype(np.float32),
    }
    if base_values is not None:
        attributes["base_values"] = base_values
    node = helper.make_node("TreeEnsembleRegressor", [INPUT_NAME], [OUTPUT_NAME], name="TreeEnsembleRegressor")
    node.domain = _ML_DOMAIN
    # Sorted by name, as make_node sorts them; built from whole arrays (make_node checks each element).
    node.attribute.extend(_attribute(name, attributes[name]) for name in sorted(attributes))
    return node


def _attribute(name: str, value: Any) -> onnx.AttributeProto:
    """Return an attribute of a float32 or int64 array, a list of byte strings, an int or a string."""
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.FLOATS)
        attribute.floats.extend(value.tolist())
        return attribute
    if isinstance(value, np.ndarray) and value.dtype == np.int64:
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.INTS)
        attribute.ints.extend(value.tolist())
        return attribute
    if isinstance(value, list):
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.STRINGS)
        attribute.strings.extend(value)
        return attribute
    return helper.make_attribute(name, value)


def _float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """Return the float32 thresholds that split float32 inputs as sklearn's float64 thresholds do.

    sklearn compares the input, cast to float32, with a float64 threshold t. The float32 w with
    `x <= t <=> x <= w` for every float32 x is the largest float32 not above t: t rounded to
    float32, stepped down once when rounding went up.
    """
    rounded = thresholds.astype(np.float32)
    return np.where(rounded > thresholds, np.nextafter(rounded, np.float32(-np.inf)), rounded)
