"""The admin API's client, for the ``sipshield`` command (blocking: a CLI
runs no reactor).  docs/admin-api.yaml describes what it talks to."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["AdminClient", "AdminUnavailable", "AdminError"]


class AdminUnavailable(Exception):
    """Nothing answers at the API's address (the server is not running, or runs without it)."""


class AdminError(Exception):
    """The API answered with an error: ``status`` and its ``error`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AdminClient:
    url: str
    """``http://HOST:PORT`` or ``https://HOST:PORT``, no trailing slash."""
    token: str
    """The bearer token; empty: none sent (a client certificate stands for it)."""
    timeout: float = 10.0
    certificate: str | None = None
    """A client certificate (PEM file) to present over https, with *key*."""
    key: str | None = None
    cacert: str | None = None
    """The CA bundle the server's certificate is checked against (default: the system's)."""

    def _tls(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=self.cacert)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certificate is not None:
            context.load_cert_chain(self.certificate, self.key)
        return context

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        try:
            context = self._tls()
        except (OSError, ValueError) as e:
            raise AdminUnavailable(f"cannot use the client certificate, key or CA file: {e}") from None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as answer:  # noqa: S310 - the operator's own URL
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace").strip() or e.reason
            raise AdminError(e.code, str(message)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AdminUnavailable(f"no admin API at {self.url}: {reason}") from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result

    def bans(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/bans")["bans"]
        return result

    def ban(self, address: str, duration: float | None = None, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"address": address}
        if duration is not None:
            body["duration"] = duration
        if reason is not None:
            body["reason"] = reason
        result: dict[str, Any] = self.request("POST", "/v1/bans", body)
        return result

    def unban(self, key: str) -> None:
        self.request("DELETE", "/v1/bans/" + quote(key, safe=""))

    def registrations(self, limit: int = 1000) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/v1/registrations?limit={limit}")["registrations"]
        return result

    def rates(self, window: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/rates" + ("" if window is None else f"?window={window}"))
        return result

    def top_talkers(self, limit: int = 10, by: str = "requests") -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/top-talkers?limit={limit}&by={quote(by)}")
        return result

    def reload_tls(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/tls/reload")
        return result

    def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/reload")
        return result

    def explain(self, request: str, source: str, user: str | None = None, headers: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"request": request, "source": source}
        if user is not None:
            body["user"] = user
        if headers:
            body["headers"] = headers
        result: dict[str, Any] = self.request("POST", "/v1/explain", body)
        return result
