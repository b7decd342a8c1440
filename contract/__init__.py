"""The contract between the hub and the workers: Redis keys, records, events, tensors, the
job store and its Lua scripts, settings and logging. It imports neither FastAPI nor
onnxruntime; ``hub`` and ``workers`` both import it, and never each other."""
