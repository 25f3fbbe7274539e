"""What no answer to a client may be or say, whatever it sent (the fuzz suites' property)."""

from __future__ import annotations

import re

import grpc

FORBIDDEN_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MAX_MESSAGE_CHARS = 600
# A Python exception class name, or a traceback, in a message meant for people.
LEAK = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|File \"")
