"""Validate what passed between the Qovery client and simulator against Qovery's spec.

The spec is a cut of Qovery's public OpenAPI spec (the paths Runboard touches and every
schema they reference), kept in tests/fixtures/specs/; openapi-core does the validating.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlencode

import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.validation.response.validators import V30ResponseHeadersValidator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response as WerkzeugResponse

SPEC_PATH = Path(__file__).parent / "fixtures" / "specs" / "qovery-openapi-subset.yaml"
SERVER = "https://api.qovery.com"  # the spec's server: requests are validated as if sent there


@cache
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


@cache
def spec_without_content() -> OpenAPI:
    """The same spec, validating a response's status code and headers only.

    For responses the spec documents with `content: {}` (no content: e.g.
    cancelDeploymentRequest's 202): openapi-core reads an empty content map as content
    required with no media type allowed, so no answer, empty or not, could pass it.
    """
    return OpenAPI.from_file_path(
        str(SPEC_PATH), config=Config(response_validator_cls=V30ResponseHeadersValidator))


def documents_no_content(method: str, path: str, status: int) -> bool:
    for regex, verb, _, node in _templates():
        if verb == method and regex.match(path):
            response = node.get("responses", {}).get(str(status))
            return isinstance(response, dict) and response.get("content", None) == {}
    return False


def openapi_pair(exchange) -> tuple[WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse]:
    """A simulator's recorded (request, status, body, headers) as openapi-core sees them."""
    request, status, body, headers = exchange
    data = json.dumps(request.body).encode() if request.body is not None else None
    sent = {k: v for k, v in request.headers.items()
            if k not in ("host", "content-length")}
    environ = EnvironBuilder(
        base_url=SERVER, path=request.path, method=request.method,
        query_string=urlencode(request.query), headers=sent, data=data,
    ).get_environ()
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = WerkzeugResponse(payload, status=status, headers=headers,
                                content_type="application/json")
    return WerkzeugOpenAPIRequest(WerkzeugRequest(environ)), WerkzeugOpenAPIResponse(response)


def violations(exchanges) -> list[str]:
    """Every request or response that the spec refuses, described in one line each."""
    found = []
    for exchange in exchanges:
        request, response = openapi_pair(exchange)
        sent, status = exchange[0], exchange[1]
        where = f"{sent.method} {sent.path} -> {status}"
        validator = spec()
        if not response.data and documents_no_content(sent.method, sent.path, status):
            validator = spec_without_content()
        try:
            spec().validate_request(request)
            validator.validate_response(request, response)
        except Exception as exc:  # openapi-core raises one class per kind of refusal
            found.append(f"{where}: {type(exc).__name__}: {exc} {exc.__cause__ or ''}")
    return found


@cache
def _templates() -> list[tuple[re.Pattern, str, str, dict]]:
    """(path regex, method, operationId, operation) of every operation the spec lists."""
    paths = yaml.safe_load(SPEC_PATH.read_text())["paths"]
    found = []
    for template, item in paths.items():
        regex = re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", template) + "$")
        for method in ("get", "post", "put", "delete", "patch"):
            if method in item:
                found.append((regex, method.upper(), item[method]["operationId"], item[method]))
    return found


def operation(method: str, path: str) -> str | None:
    """The spec's operationId for a request, or None where the spec has no such path."""
    for regex, verb, operation_id, _ in _templates():
        if verb == method and regex.match(path):
            return operation_id
    return None
