"""``dlm serve``: an OpenAI-compatible server that batches concurrent requests and streams every step.

Needs the optional extra ``[serve]`` (FastAPI, uvicorn). Modules: :mod:`~dlm.tools.serve.schemas` (request
bodies, error bodies), :mod:`~dlm.tools.serve.text` (committed-prefix text), :mod:`~dlm.tools.serve.variants`
(per-request pipelines on one model), :mod:`~dlm.tools.serve.worker` (the batching worker),
:mod:`~dlm.tools.serve.responses` (OpenAI response objects and streams), :mod:`~dlm.tools.serve.app` (the
FastAPI app), :mod:`~dlm.tools.serve.server` (uvicorn in a thread), :mod:`~dlm.tools.serve.bench`
(throughput with and without batching), ``static/index.html`` (the page). docs/serving.md describes it.
"""
