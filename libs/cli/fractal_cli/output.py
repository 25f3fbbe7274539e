"""Output for scripts (``--json``: the protobuf messages as JSON, every field present) and for
people (rich tables)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf import json_format, message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fractal_grpc.client import FractalError

Column = tuple[str, Callable[[Any], object]]


def to_dict(msg: message.Message) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, message.Message):
        return json.dumps(to_dict(value), sort_keys=True)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.console = Console()
        self.err = Console(stderr=True)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, sort_keys=True))

    def one(self, msg: message.Message, fields: Sequence[Column], title: str = "") -> None:
        """One object: JSON, or a two-column table of its fields."""
        if self.json_mode:
            self.json(to_dict(msg))
            return
        table = Table(title=title or None, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for label, get in fields:
            table.add_row(label, _cell(get(msg)))
        self.console.print(table)

    def many(
        self,
        msgs: Iterable[message.Message],
        columns: Sequence[Column],
        title: str = "",
        key: str = "items",
    ) -> None:
        """A list: a JSON array, or a table with a row per object."""
        items = list(msgs)
        if self.json_mode:
            self.json([to_dict(m) for m in items])
            return
        table = Table(title=title or None)
        for label, _ in columns:
            table.add_column(label, overflow="fold")
        for item in items:
            table.add_row(*(_cell(get(item)) for _, get in columns))
        self.console.print(table)

    def done(self, text: str, value: dict[str, Any] | None = None) -> None:
        """A confirmation: the given JSON, or the text."""
        if self.json_mode:
            self.json(value if value is not None else {"ok": True})
        else:
            self.console.print(text)

    def error(self, error: FractalError) -> None:
        if self.json_mode:
            payload = {
                "error": {
                    "code": error.code.name,
                    "message": error.message,
                    "reason": error.reason,
                    "metadata": error.metadata,
                    "field_violations": [
                        {"field": v.field, "description": v.description}
                        for v in error.field_violations
                    ],
                }
            }
            self.err.print_json(json.dumps(payload))
            return
        self.fail(f"{error.message} ({error.code.name})")
        for v in error.field_violations:
            self.err.print(Text(f"  {v.field}: {v.description}"))

    def fail(self, text: str) -> None:
        self.err.print(Text.assemble(("Error", "bold red"), ": ", text))
