"""The test-set results browser: ``tab`` builds it, ``handlers`` (``ResultsBrowser``) answers its events;
``views``, ``compare``, ``browse`` and ``figures`` turn a run's files into texts, frames and figures (no Gradio)."""
