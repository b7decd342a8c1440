"""The KServe V2 / Triton HTTP protocol: ``codec`` (the wire format), ``compression``
(Content-Encoding), ``config`` (model metadata and Triton's config from the catalogue),
``errors`` (Triton's error shape), ``wait`` (an inference's job, canceled when nobody will read
its answer) and ``routes`` (the thin router)."""
