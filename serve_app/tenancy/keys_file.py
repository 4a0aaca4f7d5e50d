"""The keys file: its YAML schema, and the entries it holds, checked one by one and against each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ALL_MODELS = "*"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the file, the entry (index and name) and the field."""


class KeyEntry(BaseModel):
    """One API key: who holds it, which models it may use and how much it may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tenant name, unique in the file, 1 to 64 of A-Z a-z 0-9 _ . -; shown in "
                                  "metrics and logs instead of the key.")
    key_sha256: str | None = Field(
        None, description="SHA-256 hex digest of the key (64 hex digits); `llmcluster keys new` prints one.")
    key: SecretStr | None = Field(
        None, description="The key in plain text, for quick local use; prefer key_sha256.")
    models: tuple[str, ...] = Field(
        min_length=1, description='Model names or aliases this key may use; ["*"] for every model.')
    rpm: int | None = Field(None, ge=1, description="Requests per minute; unset: unlimited.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute, prompt and completion; unset: unlimited.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once; unset: unlimited.")
    admin: bool = Field(False, description="The key may also read the cluster's status (GET /admin/status: "
                                           "models, replicas, nodes, load); `llmcluster status` sends it.")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        # It becomes a metric label and a log field: keep it to characters that need no quoting anywhere.
        if not _NAME.match(name):
            raise ValueError("must be 1 to 64 letters, digits, '_', '.' or '-'")
        return name

    @field_validator("key_sha256")
    @classmethod
    def _digest_shape(cls, digest: str | None) -> str | None:
        if digest is None:
            return None
        digest = digest.strip().lower()
        # The value is never echoed: a plain key pasted here by mistake must not reach a log.
        if not _DIGEST.match(digest):
            raise ValueError(f"must be the key's SHA-256 digest, 64 hex digits (got {len(digest)} characters); "
                             "`llmcluster keys new NAME` prints one")
        return digest

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: SecretStr | None) -> SecretStr | None:
        plain = key.get_secret_value() if key is not None else None
        # A client sends it as `Bearer <key>`, whose surrounding spaces do not survive.
        if plain is not None and (not plain or plain != plain.strip()):
            raise ValueError("must not be empty, nor start or end with a space")
        return key

    @field_validator("models")
    @classmethod
    def _all_stands_alone(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        if ALL_MODELS in models and len(models) > 1:
            raise ValueError(f'"{ALL_MODELS}" (every model) cannot be combined with model names')
        return models

    @model_validator(mode="after")
    def _one_key_field(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key_sha256 (the key's SHA-256 digest) and key (the plain key)")
        return self


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...] = Field(description="The API keys; a request must carry one of them.")


def read_entries(path: Path, origin: str) -> tuple[KeyEntry, ...]:
    """The entries of the keys file at `path` (named by the setting `origin`), each valid on its own."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path} ({origin}): {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        # The parser's message quotes the offending line, which may hold a plain key: give its position only.
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise KeysFileError(f"keys file {path} is not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise KeysFileError(f"keys file {path} must be a mapping with a `keys:` list; see docs/security.md")
    try:
        entries = KeysFile.model_validate(data).keys
    except ValidationError as exc:
        lines = "\n".join(_describe(error, data) for error in exc.errors())
        raise KeysFileError(f"keys file {path} is invalid:\n{lines}") from None
    if not entries:
        raise KeysFileError(f"keys file {path} lists no keys: add an entry (`llmcluster keys new NAME` prints one) "
                            f"or unset {origin} to leave the API open")
    return entries


def entry_label(index: int, name: Any) -> str:
    return f"keys[{index}] ({name})" if isinstance(name, str) and name else f"keys[{index}]"


def _describe(error: Any, data: dict[str, Any]) -> str:
    """One validation error as `keys[i] (name): field: message`; the entry's values are never quoted."""
    loc = error["loc"]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model = KeyEntry if len(loc) == 3 else KeysFile
        message = f"unknown field; allowed here: {', '.join(model.model_fields)}"
    if len(loc) >= 2 and loc[0] == "keys" and isinstance(loc[1], int):
        raw = data["keys"][loc[1]]
        name = raw.get("name") if isinstance(raw, dict) else None
        field = ".".join(str(part) for part in loc[2:]) or "(entry)"
        return f"  {entry_label(loc[1], name)}: {field}: {message}"
    return f"  {'.'.join(str(part) for part in loc) or '(top level)'}: {message}"
