"""Output heads: the nodes that produce a graph output, to keep in float.

A detector head that mixes box coordinates and class scores in one tensor loses its
coordinates to int8 or fp16 rounding long before the scores suffer, so users name such
outputs and every precision-reducing pass leaves their head alone.

The head of an output is found by walking back from its producer through nodes that feed
nothing else, and stops after the first weighted layer (Conv, Gemm, MatMul, ...): that
layer and the post-processing behind it form the head; the trunk before it is shared.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from compress.errors import CompressError

WEIGHTED_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU", "RNN", "Gather"}
)


def resolve_keep_float(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Node names to keep in float, from a mix of node names and graph output names.

    Args:
        model: The model (its nodes must be named; see ``prepare.name_unnamed_nodes``).
        names: Node names, or graph output names whose head should stay in float.

    Returns:
        Node names, without duplicates, in graph order.

    Raises:
        CompressError: A name is neither a node nor a graph output.
    """
    graph = model.graph
    node_names = {n.name for n in graph.node if n.name}
    output_names = {o.name for o in graph.output}
    chosen: set[str] = set()
    for name in names:
        if name in node_names:
            chosen.add(name)
        elif name in output_names:
            chosen.update(head_nodes(model, name))
        else:
            raise CompressError(
                f"keep-float name {name!r} is neither a node nor a graph output; "
                f"outputs are {sorted(output_names)}"
            )
    return [n.name for n in graph.node if n.name in chosen]


def head_nodes(model: onnx.ModelProto, output_name: str) -> set[str]:
    """Names of the nodes forming the head of graph output ``output_name``."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    head: set[str] = set()
    start = producer.get(output_name)
    if start is None:
        return head
    frontier = [start]
    while frontier:
        node = frontier.pop()
        if node.name in head:
            continue
        head.add(node.name)
        if node.op_type in WEIGHTED_OPS:
            continue
        for name in node.input:
            upstream = producer.get(name)
            if upstream is None or upstream.name in head:
                continue
            feeds_only_head = all(
                consumer.name in head
                for out in upstream.output
                for consumer in consumers.get(out, [])
            ) and not any(out in graph_outputs for out in upstream.output)
            if feeds_only_head:
                frontier.append(upstream)
    return head
