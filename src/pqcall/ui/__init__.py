"""The browser UI: a softphone with a local web page (``pqcall ui``).

- :mod:`~pqcall.ui.controller`: the softphone state behind the page (no web framework);
- :mod:`~pqcall.ui.app`: the FastAPI app serving ``/api`` and the static page;
- ``static/``: the page itself (HTML, JavaScript, CSS; no build step).

See ``docs/cli.md#ui``.
"""
