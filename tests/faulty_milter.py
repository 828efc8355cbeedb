"""The directmilter program with a bug injected, for the internal_error condition through a real Postfix.

Same command line as ``python -m directmilter``; the agent's outgoing step raises a plain RuntimeError (what a bug
looks like) for a message carrying an ``X-Inject-Bug`` header. A test harness only: the product has no such hook.
"""

from __future__ import annotations

import sys
from typing import Any

from directmilter.agent import Agent
from directmilter.cli import main

_outgoing = Agent.outgoing


def _buggy(self: Agent, envelope: Any, **options: Any) -> Any:
    if isinstance(envelope.message, bytes) and b"X-Inject-Bug:" in envelope.message[:4096]:
        raise RuntimeError("injected bug")
    return _outgoing(self, envelope, **options)


Agent.outgoing = _buggy  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
