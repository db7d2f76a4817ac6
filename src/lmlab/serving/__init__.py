"""The OpenAI-compatible server: the continuous-batching engine (``engine``), the HTTP app
(``app``, FastAPI), request checking (``protocol``), Prometheus metrics (``metrics``), the
playground page (``playground.html``) and running it all with uvicorn (``server``).

Nothing is imported here, so ``import lmlab.serving`` works without the ``serve`` extra."""
