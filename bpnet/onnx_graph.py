"""ONNX helpers every layer of the engine shares: a CPU session, the precision a file computes
in, and the one topological sort of a graph's nodes.

It imports nothing from bpnet but errors, so export, calibration, the guide and the backends all
sit above it (the ONNX Runtime backend no longer reaches up into `bpnet.export`).
"""

from bpnet.errors import BpnetError


def onnx_session(model_or_path, threads=None):
    """An ONNX Runtime CPU session of a ModelProto or a file (warnings silenced)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_precision(model_or_path):
    """'int8' when the graph has Q/DQ nodes, 'fp16' when it computes in float16, else 'fp32'."""
    import onnx

    model = model_or_path if hasattr(model_or_path, "graph") else onnx.load(str(model_or_path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == float16 for init in model.graph.initializer) or any(
            v.type.tensor_type.elem_type == float16 for v in model.graph.input):
        return "fp16"
    return "fp32"


def sort_nodes_topologically(graph, what="the ONNX graph"):
    """Reorder `graph.node` in place so every node comes after the producers of its inputs.

    Converters and quantizers append nodes after their consumers; ONNX (shape inference,
    TensorRT's parser) reads the node list in order. `what` names the graph in the error.
    """
    available = {i.name for i in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise BpnetError(f"{what} has a cycle or an input no node produces: "
                             f"{sorted({i for n in pending for i in n.input} - available)[:5]}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    nodes = [type(n)() for n in ordered]
    for copy, node in zip(nodes, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(nodes)
