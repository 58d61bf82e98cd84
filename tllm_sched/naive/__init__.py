"""tllm_sched/naive: the "python-naive" backend, a BASELINE, not for production use.

The same policy semantics as tllm_sched/policies, one module per policy with the same stems,
structured like TensorRT-LLM's first Python port (PyCapacityScheduler / PyMicroBatchScheduler,
PR #10273): it walks request objects and reads every property and asks every cache question per
request, each a Python -> C++ crossing. It exists to show what batching buys; its decisions
equal the other backends'. scheduler.py wires the stages (`NaiveBackend`).
"""
