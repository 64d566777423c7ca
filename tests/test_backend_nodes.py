"""The onnx backend node test cases through ``cleanup`` and the default pipeline (``simplify``).

The onnx wheel ships the case generators, not their data: ``collect_testcases()`` rebuilds
every case (model, inputs, expected outputs). A case counts when onnxruntime runs the original
model to the expected outputs (within the case's rtol/atol); after ``cleanup`` such a case must
still load and give bit-identical outputs; after ``simplify`` (which folds and fuses, so kernels
may round differently) outputs within the case's own rtol/atol of onnxruntime's. Models onnx-ir cannot represent must come back
skipped and byte-for-byte unchanged.

The default test run checks every case (1,884; about 25 s on 2 cores with ``-n 2``). Only them,
or the counts::

    pytest -m backend tests/test_backend_nodes.py -n 2
    python bench/backend_sweep.py                          # prints the counts
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxslim
from onnxslim import model_io
from onnxslim.report import SKIPPED

ort.set_default_logger_severity(4)  # expected failures of unsupported cases would flood stderr


#: Outcomes of one case.
PASS = "pass"  # onnxruntime matched expected outputs; after cleanup the outputs are identical
SKIP_IR = "skipped by onnx-ir"  # onnx-ir cannot represent the model; returned unchanged
ORT_CANNOT_RUN = "onnxruntime cannot run the original"
ORT_MISMATCH = "onnxruntime differs from expected outputs"
FAIL = "FAIL"


@dataclasses.dataclass
class Outcome:
    name: str
    status: str
    detail: str = ""


@functools.cache
def all_cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return sorted(cases, key=lambda c: c.name)


def _array(item):
    if isinstance(item, onnx.TensorProto):
        return onnx.numpy_helper.to_array(item)
    if isinstance(item, list):
        return [_array(x) for x in item]
    if item is None:
        return None
    return np.asarray(item)


def feeds_of(case) -> dict:
    """The case's inputs keyed by graph input name (initializers are not fed), as the runner does."""
    graph = case.model.graph
    initializers = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    inputs, _ = case.data_sets[0]
    return {name: _array(value) for name, value in zip(names, inputs)}


def _session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1  # identical outputs need a fixed summation order
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_ort(model: bytes, feeds: dict) -> list:
    sess = _session(model)
    wanted = {i.name for i in sess.get_inputs()}
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted}, quiet)


def _matches_expected(got, expected, rtol: float, atol: float) -> bool:
    """The backend runner's comparison (shape, dtype, allclose; strings exact; sequences item-wise)."""
    if isinstance(expected, list) or isinstance(got, list):
        return (
            isinstance(expected, list)
            and isinstance(got, list)
            and len(got) == len(expected)
            and all(_matches_expected(g, e, rtol, atol) for g, e in zip(got, expected))
        )
    if got is None or expected is None:
        return got is None and expected is None
    if got.shape != expected.shape:
        return False
    if expected.dtype == object:
        return bool(np.array_equal(got, expected))
    if got.dtype != expected.dtype:
        return False
    if got.dtype.name == "bfloat16":
        got, expected, rtol = got.astype(np.float32), expected.astype(np.float32), max(rtol, 2**-6)
    return bool(np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True))


def _identical(a, b) -> bool:
    """Bit-identical results: same structure, dtype, shape, values (NaN where NaN)."""
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_identical, a, b))
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return bool(np.array_equal(a, b))
    return a.tobytes() == b.tobytes()


def check_case(case, validated: bool = True, simplify: bool = False) -> Outcome:
    """Run one case through onnxruntime, then ``cleanup``, and classify the outcome.

    ``validated`` also runs the pipeline with validation on the case's inputs (slower);
    ``simplify`` also runs the default pipeline (``simplify``) and compares within tolerance.
    """
    original = case.model.SerializeToString()
    feeds = feeds_of(case)
    _, expected = case.data_sets[0]
    expected = [_array(x) for x in expected]
    try:
        reference = run_ort(original, feeds)
    except Exception as exc:
        return Outcome(case.name, ORT_CANNOT_RUN, _first_line(exc))
    if len(reference) != len(expected) or not all(
        _matches_expected(g, e, case.rtol, case.atol) for g, e in zip(reference, expected)
    ):
        return Outcome(case.name, ORT_MISMATCH)
    try:
        result = onnxslim.optimize(case.model, "cleanup", validate=False, final_check=False)
    except Exception as exc:
        return Outcome(case.name, FAIL, f"optimize raised {type(exc).__name__}: {_first_line(exc)}")
    if result.model is None:
        row = result.report.passes[0]
        if row.status != SKIPPED:
            return Outcome(case.name, FAIL, f"onnx-ir could not load it, but cleanup is {row.status!r}")
        if result.proto.SerializeToString() != original:
            return Outcome(case.name, FAIL, "skipped model came back changed")
        return Outcome(case.name, SKIP_IR, row.reason or "")
    try:
        cleaned = run_ort(model_io.to_bytes(result.model), feeds)
    except Exception as exc:
        return Outcome(case.name, FAIL, f"cleaned model does not run: {_first_line(exc)}")
    if len(cleaned) != len(reference):
        return Outcome(case.name, FAIL, f"{len(reference)} outputs before cleanup, {len(cleaned)} after")
    for index, (before, after) in enumerate(zip(reference, cleaned)):
        if not _identical(before, after):
            return Outcome(case.name, FAIL, f"output {index} changed after cleanup")
    status = result.report.passes[0].status
    if simplify:
        problem = _simplify_problem(case, feeds, reference)
        if problem:
            return Outcome(case.name, FAIL, problem)
    if validated:
        problem = _validated_problem(case, feeds, status)
        if problem:
            return Outcome(case.name, FAIL, problem)
    return Outcome(case.name, PASS, status)


def _simplify_problem(case, feeds: dict, reference: list) -> str | None:
    """The default pipeline, unvalidated: it must not raise, and the model must run to the
    reference outputs within the case's tolerance."""
    try:
        result = onnxslim.optimize(case.model, validate=False, final_check=False)
    except Exception as exc:
        return f"simplify: optimize raised {type(exc).__name__}: {_first_line(exc)}"
    if result.model is None:
        return None
    # A pass that raises is rolled back by the manager: the model must then be the original,
    # which the comparison below checks.
    try:
        simplified = run_ort(model_io.to_bytes(result.model), feeds)
    except Exception as exc:
        return f"simplified model does not run: {_first_line(exc)}"
    if len(simplified) != len(reference) or not all(
        _matches_expected(after, before, case.rtol, case.atol) for after, before in zip(simplified, reference)
    ):
        return "simplify changed the outputs beyond the case's tolerance"
    return None


#: The default pipeline with no data cannot validate: the original rejects random inputs, or an
#: input (a sequence) has no shape to build one from. The user is told to give data.
NO_SAMPLES = "needs data to validate"


def check_simplify(case, own_inputs: bool = True) -> Outcome:
    """The default pipeline (``simplify``) validated on the case's own inputs, as a user's run
    with ``--inputs`` would go (``own_inputs=False``: on the samples a run with no options
    builds): the outcome's detail is simplify's status (``applied``, ``no change``, ``rolled
    back: …``, ``failed: …``); FAIL when the run raises or the result does not run to the
    original's outputs within the case's tolerance. Cases onnxruntime cannot run correctly are
    classified as in :func:`check_case`."""
    feeds = feeds_of(case)
    _, expected = case.data_sets[0]
    expected = [_array(x) for x in expected]
    try:
        reference = run_ort(case.model.SerializeToString(), feeds)
    except Exception as exc:
        return Outcome(case.name, ORT_CANNOT_RUN, _first_line(exc))
    if len(reference) != len(expected) or not all(_matches_expected(g, e, case.rtol, case.atol) for g, e in zip(reference, expected)):
        return Outcome(case.name, ORT_MISMATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = onnxslim.optimize(case.model, inputs=[feeds] if own_inputs else None)
    except (onnxslim.ModelError, onnxslim.UsageError) as exc:
        if not own_inputs and ("(the original model" in str(exc) or isinstance(exc, onnxslim.UsageError)):
            return Outcome(case.name, NO_SAMPLES, _first_line(exc))
        return Outcome(case.name, FAIL, f"optimize raised {type(exc).__name__}: {_first_line(exc)}")
    except Exception as exc:
        return Outcome(case.name, FAIL, f"optimize raised {type(exc).__name__}: {_first_line(exc)}")
    row = result.report.passes[0]
    if result.model is None:
        return Outcome(case.name, SKIP_IR, row.reason or "")
    try:
        simplified = run_ort(model_io.to_bytes(result.model), feeds)
    except Exception as exc:
        return Outcome(case.name, FAIL, f"simplified model does not run: {_first_line(exc)}")
    if len(simplified) != len(reference) or not all(
        _matches_expected(after, before, case.rtol, case.atol) for after, before in zip(simplified, reference)
    ):
        return Outcome(case.name, FAIL, "simplify changed the outputs beyond the case's tolerance")
    return Outcome(case.name, PASS, row.status + (f": {row.reason}" if row.reason else ""))


def _validated_problem(case, feeds: dict, expected_status: str) -> str | None:
    """The same case through onnxslim's own validation, fed the case's inputs: zero drift."""
    try:
        result = onnxslim.optimize(case.model, "cleanup", inputs=[feeds])
    except Exception as exc:
        return f"validated optimize raised {type(exc).__name__}: {_first_line(exc)}"
    row = result.report.passes[0]
    if row.status != expected_status:
        return f"validated cleanup is {row.status!r} ({row.reason}), unvalidated {expected_status!r}"
    if any(m.max_abs != 0.0 or not m.nan_equal for m in row.metrics):
        return "validation measured drift after cleanup"
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _assert_ok(outcome: Outcome) -> None:
    assert outcome.status != FAIL, f"{outcome.name}: {outcome.detail}"


@pytest.mark.backend
@pytest.mark.parametrize("index", range(len(all_cases())), ids=[c.name for c in all_cases()])
def test_backend_case(index):
    _assert_ok(check_case(all_cases()[index]))


#: ``simplify`` costs ~0.3 s a case: every SIMPLIFY_STRIDE-th case in the default run.
SIMPLIFY_STRIDE = 8


@pytest.mark.backend
@pytest.mark.parametrize("index", range(0, len(all_cases()), SIMPLIFY_STRIDE), ids=[c.name for c in all_cases()[::SIMPLIFY_STRIDE]])
def test_backend_case_simplify(index):
    _assert_ok(check_case(all_cases()[index], validated=False, simplify=True))


@pytest.mark.parametrize("name", ["test_scan_sum", "test_scan9_sum", "test_scan9_multi_state", "test_identity_sequence"])
def test_cases_that_once_broke(name):
    """Scan bodies whose state output feeds an Identity output (cleanup once folded it into a
    duplicate output and onnxruntime computed garbage); a sequence input random data cannot fill."""
    case = next(c for c in all_cases() if c.name == name)
    outcome = check_case(case)
    assert outcome.status == PASS, f"{outcome.status}: {outcome.detail}"


def test_branch_returning_outer_value_keeps_its_identity():
    """``t_out = Identity(a)`` in an If branch, ``a`` from the main graph: onnx-ir's elimination
    raised here (rolling back all of cleanup); the chain inside the branch still shrinks."""
    from onnx import TensorProto, helper

    def branch(name, chain):
        nodes = [helper.make_node("Identity", [src], [dst]) for src, dst in zip(["a", *chain], chain)]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(chain[-1], TensorProto.FLOAT, [2])])

    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["a"]),
            helper.make_node("If", ["c"], ["y"], then_branch=branch("then", ["t_out"]), else_branch=branch("else", ["e_mid", "e_out"])),
            helper.make_node("Abs", ["a"], ["z"]),
        ],
        "outer_value",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    for condition in (True, False):
        feeds = {"x": np.array([1.0, -2.0], np.float32), "c": np.array(condition)}
        result = onnxslim.optimize(model, "cleanup", inputs=[feeds])
        row = result.report.passes[0]
        assert row.status == "applied" and row.details["nodes_removed"] == 1, (row.status, row.reason)
        assert all(m.max_abs == 0.0 for m in row.metrics)
        assert _identical(run_ort(model_io.to_bytes(result.model), feeds), run_ort(model.SerializeToString(), feeds))


def test_validated_pipeline_on_case_inputs():
    """Through validation with the case's own inputs: cleanup is applied and reports zero drift."""
    case = next(c for c in all_cases() if c.name == "test_gemm_all_attributes")
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    # An Identity chain and a dead node give cleanup real work on a one-node case.
    graph = model.graph
    out = graph.output[0].name
    graph.node[-1].output[0] = "pre_identity"
    graph.node.extend(
        [
            onnx.helper.make_node("Identity", ["pre_identity"], ["mid_identity"]),
            onnx.helper.make_node("Identity", ["mid_identity"], [out]),
            onnx.helper.make_node("Neg", ["pre_identity"], ["unused"]),
        ]
    )
    feeds = feeds_of(case)
    result = onnxslim.optimize(model, "cleanup", inputs=[feeds])
    row = result.report.passes[0]
    assert row.status == "applied", row.reason
    assert row.details["nodes_removed"] == 3
    assert all(m.max_abs == 0.0 and m.within_tolerance for m in row.metrics)
    _, expected = case.data_sets[0]
    got = run_ort(model_io.to_bytes(result.model), feeds)
    np.testing.assert_allclose(got[0], _array(expected[0]), rtol=case.rtol, atol=case.atol)
