"""Project configuration: ``tagdsl.toml``, validated with pydantic.

Lint must not need a database, so the follower schema and the event sources
are declared here, not reflected. With no file, the defaults describe the
engine's own default follower store (followers, orders, events).
"""

from __future__ import annotations

import os
import tomllib
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .diagnostics import TagDSLError

CONFIG_NAME = "tagdsl.toml"


class ConfigError(TagDSLError):
    exit_code = 2


class FieldType(str, Enum):
    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    type: FieldType
    column: Optional[str] = None  # defaults to the field's name
    scale: Optional[int] = None  # decimal places of a decimal column (for exact sums on SQLite)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `city = "string"` is shorthand for `city = { type = "string" }`.
        return {"type": value} if isinstance(value, str) else value


def _fields(**kinds: str) -> dict[str, FieldSpec]:
    return {name: FieldSpec(type=FieldType(kind)) for name, kind in kinds.items()}


class ProjectSection(_Strict):
    rulesets: list[str] = ["rulesets"]
    timezone: str = "Asia/Shanghai"
    platform: Literal["wechat_mp", "wecom", "none"] = "wechat_mp"
    sensitive_words: list[str] = ["未成年", "健康", "疾病", "宗教", "民族", "政治", "收入", "身份证"]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Asia/Shanghai')")
        return value


class DatabaseSection(_Strict):
    url: str = "sqlite:///tagdsl.db"
    table_prefix: str = "tagdsl_"


class FollowersSection(_Strict):
    table: str = "followers"
    id: str = "openid"
    fields: dict[str, FieldSpec] = Field(default_factory=lambda: _fields(
        unionid="string", subscribe_time="datetime", subscribe_scene="string", qr_scene_str="string",
        language="string", remark="string", city="string", province="string", gender="integer",
        age="integer", last_active_at="datetime", subscribed="boolean",
    ))


class SourceSection(_Strict):
    table: str
    follower: str = "openid"
    time: Optional[str] = None
    fields: dict[str, FieldSpec] = Field(default_factory=dict)


def _default_sources() -> dict[str, SourceSection]:
    return {
        "orders": SourceSection(table="orders", follower="openid", time="created_at",
                                fields={"amount": FieldSpec(type=FieldType.DECIMAL, scale=2),
                                        **_fields(category="string", promo="boolean")}),
        "events": SourceSection(table="events", follower="openid", time="occurred_at",
                                fields=_fields(type="string", key="string")),
    }


class LimitsSection(_Strict):
    """Overrides of the platform's limit profile; unset keys keep the profile's."""

    max_tags: Optional[int] = None
    max_tags_per_follower: Optional[int] = None
    name_max_bytes: Optional[int] = None
    name_max_chars: Optional[int] = None
    name_recommended_chars: Optional[int] = None
    max_depth: Optional[int] = None
    reserved_names: Optional[list[str]] = None


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True)
    max_tags: Optional[int]
    max_tags_per_follower: Optional[int]
    name_max_bytes: Optional[int]
    name_max_chars: Optional[int]
    name_recommended_chars: Optional[int]
    max_depth: Optional[int]
    reserved_names: list[str]


PLATFORM_LIMITS: dict[str, dict[str, Any]] = {
    # Official account: 100 tags (45056), 30-byte names (45158), 20 tags per
    # follower (45059), 星标组 is the built-in tag id 2 (45058).
    "wechat_mp": dict(max_tags=100, max_tags_per_follower=20, name_max_bytes=30, name_max_chars=None,
                      name_recommended_chars=8, max_depth=3, reserved_names=["星标组"]),
    # WeCom corp customer tags: 3000 per enterprise, names up to 30 characters.
    "wecom": dict(max_tags=3000, max_tags_per_follower=None, name_max_bytes=None, name_max_chars=30,
                  name_recommended_chars=8, max_depth=3, reserved_names=[]),
    "none": dict(max_tags=None, max_tags_per_follower=None, name_max_bytes=None, name_max_chars=None,
                 name_recommended_chars=None, max_depth=None, reserved_names=[]),
}


class WechatMPSection(_Strict):
    appid: Optional[str] = None
    appid_env: Optional[str] = None
    secret_env: str = "WECHAT_APP_SECRET"
    api_base_url: Optional[str] = None
    token_env: str = "WECHAT_TOKEN"
    aes_key_env: str = "WECHAT_AES_KEY"
    events_source: str = "events"


class WecomSection(_Strict):
    corpid: Optional[str] = None
    corpid_env: Optional[str] = None
    secret_env: str = "WECOM_SECRET"
    api_base_url: Optional[str] = None
    userid: Optional[str] = None  # the follow user whose external contacts are tagged, when fixed
    default_group: str = "tagdsl"  # the corp tag group of tags declared outside any group


class Config(_Strict):
    project: ProjectSection = Field(default_factory=ProjectSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    followers: FollowersSection = Field(default_factory=FollowersSection)
    sources: dict[str, SourceSection] = Field(default_factory=_default_sources)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    wechat_mp: WechatMPSection = Field(default_factory=WechatMPSection)
    wecom: WecomSection = Field(default_factory=WecomSection)
    # Where the file was found (None: built-in defaults); relative paths resolve here.
    path: Optional[Path] = None

    @model_validator(mode="after")
    def _names(self) -> "Config":
        for name in self.sources:
            if name in self.followers.fields:
                raise ValueError(f"sources.{name}: a source cannot share its name with a follower field")
        return self

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.project.timezone)

    @property
    def limits_resolved(self) -> Limits:
        values = dict(PLATFORM_LIMITS[self.project.platform])
        values.update({k: v for k, v in self.limits.model_dump().items() if v is not None})
        return Limits(**values)

    @property
    def database_url(self) -> str:
        url = os.environ.get("TAGDSL_DATABASE_URL") or self.database.url
        # A relative SQLite path is relative to the configuration file.
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and self.path is not None:
            rel = url[len("sqlite:///"):]
            if rel and rel != ":memory:" and not rel.startswith("file:"):
                url = "sqlite:///" + str((self.base_dir / rel).resolve())
        return url

    def ruleset_paths(self) -> list[Path]:
        return [(self.base_dir / p) for p in self.project.rulesets]


def find_config(start: Path | None = None) -> Path | None:
    """Walk up from ``start`` (default: the current directory) to find tagdsl.toml."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _format_error(exc: ValidationError, path: Path) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if p not in ("function-after",)) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif err["type"] == "enum":
        msg = f"must be one of {', '.join(t.value for t in FieldType)}"
    elif err["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be")
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{path}: invalid configuration at `{key}`: {msg}{more}"


def load_config(path: str | Path | None = None, *, search_from: Path | None = None) -> Config:
    """Load ``path``, or the tagdsl.toml found walking up, or the defaults."""
    if path is None:
        found = find_config(search_from)
        if found is None:
            return Config()
        path = found
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: configuration file is not UTF-8")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}")
    if "path" in data:
        raise ConfigError(f"{path}: invalid configuration at `path`: unknown key")
    try:
        return Config(**data, path=path.resolve())
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, path))
    except TypeError as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{path}: invalid configuration: {exc}")
