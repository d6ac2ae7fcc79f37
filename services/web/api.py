"""The HTTP/JSON front door's API: routes onto Gateway methods, JSON <-> protobuf, the
error model, and the OpenAPI document built from the same proto descriptors (so the
document cannot drift from what the gRPC API accepts). No HTTP server here.

JSON is protobuf's canonical JSON mapping with the .proto field names (snake_case; the
camelCase names are accepted on input too), int64 as strings, enums by name.
Errors: the HTTP status mapped from the gRPC code, and a body
{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "..."}}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from vidrec.v1 import gateway_pb2

# (status, headers, body) of one HTTP answer.
Answer = tuple[int, dict[str, str], bytes]
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]


@dataclass(frozen=True)
class Route:
    method: str  # HTTP method
    path: str
    rpc: str  # Gateway method name
    scope: str  # the API key scope it needs (documentation; the gateway enforces it)
    summary: str

    @property
    def input(self) -> Descriptor:
        return GATEWAY.methods_by_name[self.rpc].input_type

    @property
    def output(self) -> Descriptor:
        return GATEWAY.methods_by_name[self.rpc].output_type


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/recommend", "Recommend", "recommend",
          "Ranked videos for a known user, or a new one described by profile."),
    Route("POST", "/v1/events", "LogEvents", "events:write",
          "Log watch, click, like... events (acknowledged by Kafka before the answer)."),
    Route("POST", "/v1/similar", "SimilarVideos", "recommend",
          "More like this: videos similar to one video, through the rerank rules."),
    Route("POST", "/v1/videos", "UpsertVideos", "catalog:write",
          "Add or update catalog videos (idempotent by video_id)."),
    Route("POST", "/v1/videos:hide", "HideVideos", "catalog:write",
          "Hide videos from every list (or unhide them)."),
    Route("GET", "/v1/stats", "GetStats", "stats:read",
          "Online metrics per model version and experiment arm, with 95% intervals."),
)
BY_PATH = {(r.method, r.path): r for r in ROUTES}

# gRPC code -> HTTP status (the mapping Google's API gateways use).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ApiError(Exception):
    """An answer that is an error: the gRPC code names it, the message is for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 headers: Mapping[str, str] | None = None, http_status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.http_status = http_status  # where HTTP says more than the gRPC code (405, 413)

    @property
    def status(self) -> int:
        return self.http_status or HTTP_STATUS.get(self.code, 500)

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.status, "status": self.code.name,
                                     "message": self.message}}).encode()


def parse_body(route: Route, body: bytes, query: Mapping[str, list[str]] | None = None
               ) -> Message:
    """The request message from a JSON body (POST) or query parameters (GET), or an
    ApiError(INVALID_ARGUMENT) that says where the JSON is wrong."""
    msg_class = _message_class(route.input)
    msg = msg_class()
    if route.method == "GET":
        if query:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{route.path} takes no parameters")
        return msg
    if not body.strip():
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "the request body is empty; send a JSON object")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
                       ) from None
    if not isinstance(doc, dict):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"the body must be a JSON object, got {type(doc).__name__}")
    try:
        json_format.ParseDict(doc, msg)
    except json_format.ParseError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"does not match {route.input.name}: {exc}") from None
    return msg


def to_json(msg: Message) -> bytes:
    return json.dumps(json_format.MessageToDict(
        msg, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)).encode()


def _message_class(d: Descriptor) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(d)


# --- OpenAPI ---------------------------------------------------------------------------

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    # Proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schema_name(d: Descriptor | EnumDescriptor) -> str:
    return d.full_name.removeprefix("vidrec.v1.").replace(".", "_")


def _field_schema(f: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        assert f.message_type is not None
        mt = f.message_type
        if mt.GetOptions().map_entry:
            return {"type": "object",
                    "additionalProperties": _field_schema(mt.fields_by_name["value"], schemas)}
        _message_schema(mt, schemas)
        one: dict[str, Any] = _ref(_schema_name(mt))
    elif f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        name = _schema_name(f.enum_type)
        schemas.setdefault(name, {"type": "string",
                                  "enum": [v.name for v in f.enum_type.values]})
        one = _ref(name)
    else:
        one = dict(_SCALARS.get(f.type, {"type": "string"}))
    if f.is_repeated:
        return {"type": "array", "items": one}
    return one


def _message_schema(d: Descriptor, schemas: dict[str, Any]) -> str:
    name = _schema_name(d)
    if name in schemas:
        return name
    schemas[name] = {}  # placeholder: recursive messages terminate
    schemas[name] = {"type": "object", "additionalProperties": False, "properties": {
        f.name: _field_schema(f, schemas) for f in d.fields}}
    return name


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES, schemas generated from the gateway's protos."""
    schemas: dict[str, Any] = {"Error": {"type": "object", "properties": {"error": {
        "type": "object", "properties": {
            "code": {"type": "integer", "description": "the HTTP status"},
            "status": {"type": "string", "description": "the gRPC status code name"},
            "message": {"type": "string"}}}}}}
    paths: dict[str, Any] = {}
    errors = {str(s): {"description": c.name, "content": {"application/json": {
        "schema": _ref("Error")}}}
        for c, s in sorted(HTTP_STATUS.items(), key=lambda x: x[1]) if s >= 400
        and c in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                  grpc.StatusCode.DEADLINE_EXCEEDED)}
    for r in ROUTES:
        op: dict[str, Any] = {
            "operationId": r.rpc, "summary": r.summary,
            "description": f"gRPC vidrec.v1.Gateway/{r.rpc}. Needs an API key with the "
                           f"'{r.scope}' scope (or 'admin')"
                           + (", or a user token acting for its own user."
                              if r.scope in ("recommend", "events:write") else "."),
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": _ref(_message_schema(r.output, schemas))}}}, **errors}}
        if r.method == "POST":
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": _ref(_message_schema(r.input, schemas))}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "vidrec", "version": version,
                 "description": "Video recommendations over HTTP/JSON: the same methods, "
                                "credentials and errors as the gRPC gateway."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (`vidrec keys create`) or a user token "
                           "(`vidrec keys token`)."}}},
    }
