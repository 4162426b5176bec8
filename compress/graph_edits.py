"""Graph edits shared by the passes: Gemm to MatMul, dropping unused initializers,
topological order.

Each edit returns or mutates a model such that onnxruntime computes the same outputs; they
exist because a pass needs the graph in a particular shape (onnxruntime's dynamic quantizer
has no integer Gemm; the fp16 converter leaves nodes out of order).
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from compress.errors import UnsupportedModelError


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite ``Gemm`` nodes with a constant weight as ``MatMul`` (+ ``Add`` for the bias).

    onnxruntime's dynamic quantizer has no integer Gemm, so a Gemm layer would stay float;
    as MatMul it becomes ``MatMulInteger``. Only Gemms with ``transA = 0`` and a weight
    initializer are rewritten; ``alpha``, ``beta`` and ``transB`` are folded into new
    initializers.

    Returns:
        A new model and how many Gemm nodes were rewritten.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    taken = {init.name for init in graph.initializer} | {
        name for node in graph.node for name in (*node.input, *node.output)
    }

    def fresh(base: str) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" else None
        if weight is None or attrs.get("transA", 0):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        if attrs.get("transB", 0):
            w = w.T
        w = (w * float(attrs.get("alpha", 1.0))).astype(w.dtype)
        w_name = fresh(f"{node.input[1]}_matmul")
        graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = fresh(f"{node.name or 'gemm'}_matmul_out") if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=fresh(node.name))
        )
        if has_bias:
            bias_name = node.input[2]
            beta = float(attrs.get("beta", 1.0))
            if beta != 1.0:
                bias = inits.get(bias_name)
                if bias is None:
                    # A computed bias scaled by beta: keep the Gemm as it is.
                    new_nodes.pop()
                    new_nodes.append(node)
                    continue
                b = numpy_helper.to_array(bias)
                bias_name = fresh(f"{bias_name}_scaled")
                graph.initializer.append(
                    numpy_helper.from_array((b * beta).astype(b.dtype), bias_name)
                )
            new_nodes.append(
                helper.make_node(
                    "Add", [mm_out, bias_name], [node.output[0]], name=fresh(f"{node.name}_bias")
                )
            )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    return out, rewritten


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph's nodes read, including from nested subgraphs."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    used |= _used_names(sub)
    return used


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove initializers nothing reads (and their graph inputs, in old IR models).

    Returns:
        How many initializers were removed.
    """
    used = _used_names(graph) | {o.name for o in graph.output}
    dropped = {init.name for init in graph.initializer if init.name not in used}
    if not dropped:
        return 0
    keep = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [value for value in graph.input if value.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    return len(dropped)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node comes after the nodes it reads from.

    onnxruntime sorts on load, but ONNX requires sorted graphs and some converters (the fp16
    converter's input Casts) append nodes at the end.

    Raises:
        UnsupportedModelError: The graph has a cycle.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(_outer_inputs_ready(n, available))]
        if not ready:
            raise UnsupportedModelError(
                f"graph has a cycle or dangling inputs at node {pending[0].name!r}"
            )
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = []
    for node in ordered:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def _outer_inputs_ready(node: onnx.NodeProto, available: set[str]) -> list[bool]:
    # Inputs of nested subgraphs may come from the outer scope; only the node's own
    # inputs decide order here (ONNX requires outer-scope values to exist before the node,
    # which they do when the node's own inputs are ready in every graph we produce).
    return [name in available for name in node.input]
