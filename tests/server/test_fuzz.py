"""Fuzz the routes from the server's own OpenAPI schema: no 5xx, and every error in OpenAI's shape.

Bodies are drawn from the published request schemas (so many are valid and really generate), mixed with
values of the wrong type, out-of-range numbers, unknown fields and missing required ones.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ERROR_KEYS = {"message", "type", "param", "code"}
JSON_ROUTES = ["/v1/audio/speech", "/v1/audio/generation", "/v1/chat/completions"]

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


class Schemas:
    def __init__(self, spec: dict):
        self.components = spec["components"]["schemas"]

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def values(self, schema: dict, valid: bool, depth: int = 0) -> st.SearchStrategy:
        """Values the schema allows (edges included); unless ``valid``, sometimes anything at all."""
        if depth >= 4:
            return junk
        allowed = self._allowed(self.resolve(schema), valid, depth)
        return allowed if valid else st.one_of(allowed, junk)

    def _allowed(self, schema: dict, valid: bool, depth: int) -> st.SearchStrategy:
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.values(s, valid, depth + 1) for s in schema[key]])
        kind = schema.get("type")
        if kind == "string":
            return st.text(min_size=schema.get("minLength", 0), max_size=40)
        if kind == "integer":
            low, high = schema.get("minimum", 0), min(schema.get("maximum", 10**6), 10**6)
            return st.integers(low, high) | st.sampled_from([low, schema.get("maximum", high)])
        if kind == "number":
            low, high = schema.get("minimum", schema.get("exclusiveMinimum", 0)), schema.get("maximum", 10)
            exclusive = "exclusiveMinimum" in schema
            return st.floats(low, high, exclude_min=exclusive, allow_nan=False)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            return st.lists(self.values(schema.get("items", {}), valid, depth + 1), min_size=schema.get("minItems", 0),
                            max_size=3)
        if kind == "object" or "properties" in schema:
            return self.objects(schema, valid, depth + 1)
        return junk

    def objects(self, schema: dict, valid: bool, depth: int = 0) -> st.SearchStrategy:
        schema = self.resolve(schema)
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {name: self.values(sub, valid, depth) for name, sub in props.items()}
        optional = {name: s for name, s in fields.items() if name not in required}
        present = st.fixed_dictionaries({n: fields[n] for n in required}, optional=optional)
        if valid:
            return present
        # Required fields dropped and unknown ones added must give a 400, not a crash.
        return present | st.fixed_dictionaries({}, optional={**fields, "unknown_field": junk})

    def bodies(self, schema: dict) -> st.SearchStrategy:
        """Half conforming to the schema (most of those generate audio), half anything goes."""
        return self.objects(schema, True) | self.objects(schema, False)


@pytest.fixture(scope="module")
def spec(server) -> dict:
    with server.client() as c:
        return c.get("/openapi.json").json()


def request_schema(spec: dict, path: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def check(response: httpx.Response) -> int:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return response.status_code


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_json_routes(server, spec, path):
    schemas = Schemas(spec)
    statuses: list[int] = []
    with server.client(timeout=120) as client:

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(body=schemas.bodies(request_schema(spec, path)))
        def run(body):
            statuses.append(check(client.post(path, json=body)))

        run()
    # The schema-driven bodies must reach generation too, not only the validators.
    assert statuses.count(200) >= 3 and any(400 <= s < 500 for s in statuses), statuses


def test_malformed_bodies_and_voice_routes(server):
    with server.client() as client:

        @settings(max_examples=60, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(raw=st.binary(max_size=200), name=st.text(max_size=70),
               form=st.dictionaries(st.sampled_from(["name", "transcript", "description", "force"]),
                                    st.text(max_size=30), max_size=4))
        def run(raw, name, form):
            for path in JSON_ROUTES:
                check(client.post(path, content=raw, headers={"content-type": "application/json"}))
            check(client.delete(f"/v1/voices/{quote(name, safe='')}"))
            check(client.post("/v1/voices", data=form, files={"file": ("x.wav", raw, "audio/wav")}))
            check(client.post("/v1/voices", data=form))

        run()
