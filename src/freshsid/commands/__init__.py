"""The CLI's sub-apps, one module per pipeline stage; ``freshsid.cli`` is the root app.

Each command is a short adapter over one library call: parse options, call, print.
Shared options and helpers live in :mod:`freshsid.commands.common`.
"""
