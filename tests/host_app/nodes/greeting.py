"""A node the host wrote before External Agents existed: greets a customer by name and plan."""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import Node, NodeParameter, register_node

from errors import ValidationError


@register_node()
class GreetCustomerNode(Node):
    """Greets each customer it is given; refuses an empty name with the host's own ValidationError."""

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {
            "customers": NodeParameter(
                name="customers", type=list, required=False, default=[], description="rows of the customers table"
            ),
            "salutation": NodeParameter(
                name="salutation", type=str, required=False, default="Hello", description="the greeting word"
            ),
        }

    def run(self, **kwargs: Any) -> dict[str, Any]:
        greetings = []
        for customer in kwargs.get("customers") or []:
            if not customer.get("name"):
                raise ValidationError("every customer needs a name")
            greetings.append(f"{kwargs.get('salutation') or 'Hello'}, {customer['name']} ({customer['plan']})!")
        return {"greetings": greetings}
