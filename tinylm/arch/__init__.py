"""Architecture search: which model shape to train at a parameter budget, measured on the user's device.

shapes.py counts parameters in closed form and enumerates Llama-style shapes near a budget; latency.py
measures a shape's decode latency, prefill throughput and memory; sweep.py is `tinylm arch sweep`, which
measures a spread of shapes, optionally trains the promising ones briefly, and recommends one.

The package root exports only what needs the model alone, so the training package (a ladder reporting
each rung's latency, say) can use it; the sweep, which trains, is imported from tinylm.arch.sweep.
"""

from tinylm.arch.latency import measure_latency
from tinylm.arch.shapes import embedding_params, enumerate_shapes, param_count, parse_count, read_shape, shape_name

__all__ = ["embedding_params", "enumerate_shapes", "measure_latency", "param_count", "parse_count", "read_shape",
           "shape_name"]
