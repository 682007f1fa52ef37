"""OpenAI-style errors: every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import os
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from higgs_audio.errors import HiggsAudioError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def __reduce__(self):  # whole, so that it crosses processes (the cluster's engine replicas send it)
        return APIError, (self.status, self.message), {"param": self.param, "code": self.code, "type": self.type}


# A path-looking word: from "/", "~" or a drive letter up to a space, quote or bracket.
_PATH = re.compile(r"""(?<![\w.:/])(?:~|[A-Za-z]:\\|/)[^\s'"`,;()<>\[\]]*""")


def redact_paths(message: str) -> str:
    """``message`` with every server path (temporary uploads, the voice library, home folders) cut to its
    last part: clients see "upload.wav", not where the server keeps it. A word is a path when it starts
    with "~", a drive letter, or a folder that exists at the file system's root (so routes such as
    "/v1/voices" stay)."""

    def short(match: re.Match) -> str:
        word = match.group(0)
        top = word.lstrip("/").split("/", 1)[0]
        if word.startswith("/") and not (top and os.path.isdir("/" + top)):
            return word
        return os.path.basename(word.rstrip("/\\").replace("\\", "/")) or "<server path>"

    return _PATH.sub(short, message)


def error_body(status: int, message: str, *, param=None, code=None, type=None) -> dict:
    kind = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": redact_paths(message), "type": kind, "param": param, "code": code}}


def error_response(err: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, param=err.param, code=err.code, type=err.type),
        status_code=err.status,
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message), param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(APIError(exc.status_code, str(exc.detail)), headers=getattr(exc, "headers", None))

    @app.exception_handler(HiggsAudioError)
    async def _bad_input(request: Request, exc: HiggsAudioError):
        # raised where user input enters (audio, messages, voices): the message says what to fix
        return error_response(APIError(400, str(exc)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request %s failed", getattr(request.state, "request_id", "-"))
        return error_response(APIError(500, "internal server error; see the server log", type="server_error"))
