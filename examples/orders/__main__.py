"""Placeholder: exercises the ports until the composition root lands."""

from __future__ import annotations

from domain_errors import Conflict, to_http_response
from ports import Event, bind_context, request_id


def main() -> None:
    with bind_context(request_id="req-demo"):
        event = Event(type="order.placed", source="orders", organization_id="org-1")
        print(f"request {request_id()}: {event.to_json()}")
        print(to_http_response(Conflict("order o-1 already exists")).to_dict())


if __name__ == "__main__":
    main()
