"""``/openapi.json`` says exactly what the server does: it is built from the route table, whose
parameters parse what they describe, whose body types decode what they describe, and whose
links lead where the answers' ids are used."""

from __future__ import annotations

import json

import msgspec
import pytest

from tether.http._errors import STATUS
from tether.http._openapi import openapi_document
from tether.http._routes import OPERATIONS


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(openapi_document())


def _operation(doc: dict, operation_id: str) -> dict:
    for ops in doc["paths"].values():
        for op in ops.values():
            if op["operationId"] == operation_id:
                return op
    raise AssertionError(f"no operation {operation_id}")


def test_every_parameter_is_described_by_its_parser(doc):
    for op in OPERATIONS:
        described = {p["name"]: p for p in _operation(doc, op.view)["parameters"]}
        assert set(described) == {*op.path_params, *(p.name for p in op.query)}, op.view
        for param in op.query:
            assert described[param.name]["in"] == param.location
            assert described[param.name]["schema"] == param.schema()
            if param.example is not None:  # a document's example is a request the server takes
                assert param.parse(str(param.example)) is not None


def test_every_example_body_decodes(doc):
    schemas = doc["components"]["schemas"]
    for op in OPERATIONS:
        if op.body is None:
            continue
        properties = schemas[op.body.__name__]["properties"]
        example = {name: prop["examples"][0] for name, prop in properties.items()
                   if "examples" in prop}
        assert msgspec.convert(example, op.body) is not None, op.view


def test_links_lead_to_operations_that_take_what_they_give(doc):
    followed = 0
    for op in OPERATIONS:
        for link in op.links:
            target = _operation(doc, link.target)
            names = {p["name"] for p in target["parameters"]}
            for name, expression in link.parameters:
                assert name in names, (op.view, link.name, name)
                assert expression.startswith(("$response.body#/", "$request.path."))
            if link.body:
                body = target["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                fields = doc["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]
                assert {name for name, _ in link.body} <= set(fields)
            followed += 1
    links = {link.target for op in OPERATIONS for link in op.links}
    assert {"get_session", "terminate_session", "get_session_history", "get_session_metrics",
            "attach_client", "run_command", "detach_client", "get_command", "get_webhook",
            "update_webhook", "delete_webhook", "test_webhook", "list_deliveries",
            "retry_delivery"} <= links
    assert followed == sum(len(op.links) for op in OPERATIONS)


def test_error_answers_are_described_from_the_one_table(doc):
    for op in OPERATIONS:
        responses = _operation(doc, op.view)["responses"]
        for status in op.errors:
            response = responses[str(status)]
            assert response["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorEnvelope"}
            codes = [code for code, code_status in STATUS.items() if code_status == status]
            assert any(f"{code}" in response["description"] for code in codes), (op.view, status)
        if 401 in op.errors:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if 405 in op.errors:
            assert responses["405"]["headers"]["Allow"]["required"] is True
