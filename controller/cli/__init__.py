"""`wakegate`: the command line, and the composition root that wires proxy and controller.

- args: the commands and their options; `main`
- serve, serve_proxy: `up`/`controller` and `proxy`, which build and run everything
- process, logs: the event loop, logging and signals of a serving process; log lines
- client: where the controller API is and the HTTP calls to it
- status, keys, commands: the commands that talk to the running controller
- validate: `validate`, and the checks made before serving
- exit, output: how a command fails, and how it prints tables and times
"""

from .args import build_parser, main

__all__ = ["build_parser", "main"]
