"""The browser UI: a softphone with a local web page (``pqcall ui``).

- :mod:`~pqcall.ui.controller`: the softphone state behind the page (no web framework),
  coordinating its parts: :mod:`~pqcall.ui.account` (unlock, register),
  :mod:`~pqcall.ui.callcontrol` (the call), :mod:`~pqcall.ui.trust` (contacts' keys,
  warnings), :mod:`~pqcall.ui.presence`, :mod:`~pqcall.ui.transfers` (files),
  :mod:`~pqcall.ui.notes` (the UI's file in the home), :mod:`~pqcall.ui.view` (the
  page's JSON), over one :mod:`~pqcall.ui.hub` (phone, subscribers, background work);
  refusals are :mod:`~pqcall.ui.errors`;
- :mod:`~pqcall.ui.app`: the FastAPI app serving ``/api`` and the static page;
- ``static/``: the page itself (HTML, JavaScript, CSS; no build step).

See ``docs/cli.md#ui``.
"""
