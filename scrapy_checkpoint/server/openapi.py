"""The OpenAPI 3.1 document of the JSON API, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

API = "/api/v1"

_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_STAGE = {"name": "stage", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "A stage name, or a shared stage's name"}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or _OBJ}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid stage name", 401: "Missing or wrong bearer token",
            403: "Actions are disabled: the server has no token",
            404: "No such stage", 409: "A live process owns the stage",
            422: "The stage cannot be read (damaged)",
            429: "Too many failed authentication attempts (see Retry-After)"}
    return {str(c): _json(text[c], _ERROR) for c in codes}


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI document (a JSON object) of the API of package ``version``."""
    read = _errors(401, 429)
    action = _errors(400, 401, 403, 404, 409, 422, 429)
    return {
        "openapi": "3.1.0",
        "info": {"title": "scrapy-checkpoint status server", "version": version,
                 "description": "Read-only views of the stages in one store, and two actions. "
                                "Documents: docs/cli.md (JSON output) and docs/server.md."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            f"{API}/stages": {"get": {
                "summary": "Every stage (as 'scrapy-checkpoint list --json')",
                "responses": {"200": _json("{schema_version, checkpoint_dir, stages, shared}"),
                              **read}}},
            f"{API}/stages/{{stage}}": {"get": {
                "summary": "One stage (as 'scrapy-checkpoint show STAGE --json'); a shared "
                           "stage's summary and workers",
                "parameters": [_STAGE],
                "responses": {"200": _json("The stage entry plus input_file_matches"),
                              **_errors(400, 401, 404, 422, 429)}}},
            f"{API}/stages/{{stage}}/history": {"get": {
                "summary": "The stage's progress samples taken by this server, oldest first",
                "parameters": [_STAGE],
                "responses": {"200": _json("{stage, interval_seconds, samples: [{t, processed, "
                                           "rate, throughput}]}"), **read}}},
            f"{API}/history": {"get": {
                "summary": "Every stage's progress samples",
                "responses": {"200": _json("{interval_seconds, stages: {stage: [sample]}}"),
                              **read}}},
            f"{API}/report": {"get": {
                "summary": "The pipeline report (as 'scrapy-checkpoint report --json')",
                "responses": {"200": _json("{schema_version, checkpoint_dir, stages, overall}"),
                              **read}}},
            f"{API}/health": {"get": {
                "summary": "Store reachability and latency, disk, stuck and crashed stages",
                "responses": {"200": _json("{status: ok|degraded, store, stuck, crashed, "
                                           "damaged, stuck_after_seconds}"),
                              "503": _json("status down: the store cannot be reached"),
                              **read}}},
            f"{API}/stages/{{stage}}/reset": {"post": {
                "summary": "Delete the stage so its next run starts from nothing (token "
                           "required); refused while a live process owns it",
                "parameters": [_STAGE], "security": [{"bearer": []}],
                "responses": {"200": _json("{stage, reset: true, sub_stages?}"), **action}}},
            f"{API}/stages/{{stage}}/requeue": {"post": {
                "summary": "Make the stage's failed units pending again (token required); "
                           "refused while a live process owns it",
                "parameters": [_STAGE], "security": [{"bearer": []}],
                "responses": {"200": _json("{stage, requeued: int}"), **action}}},
            f"{API}/openapi.json": {"get": {"summary": "This document",
                                            "responses": {"200": _json("OpenAPI 3.1")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of every stage",
                "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **read}}},
        },
    }


__all__ = ["API", "openapi_document"]
