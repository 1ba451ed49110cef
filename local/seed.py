"""The local stack's seed (docs/seed.md): validated, with errors that name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_SEED = Path(__file__).with_name("seed.json")
Behavior = Literal["approve", "decline", "no_ack", "ack_then_silent", "offline", "slow", "busy"]


class SeedError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedMerchant(_Strict):
    merchant_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    login: str = Field(min_length=1)
    password: str = Field(min_length=12)
    notify_passphrase: str = Field(min_length=1)
    notify_url: str | None = None
    basket_policy: Literal["lenient", "strict"] = "lenient"


class SimulatorSpec(_Strict):
    behavior: Behavior = "approve"
    delay_ms: int | None = Field(default=None, ge=0, le=600_000)


class SeedTerminal(_Strict):
    merchant_id: str
    manufacturer: str = Field(pattern=r"^[A-Za-z0-9]{1,32}$")
    serial_number: str = Field(pattern=r"^[A-Za-z0-9]{1,64}$")
    passphrase: str | None = Field(min_length=1)
    simulator: SimulatorSpec | None = None

    @property
    def terminal_id(self) -> str:
        return f"{self.manufacturer.upper()}-{self.serial_number}"


class Seed(_Strict):
    ipn_secret: str = Field(min_length=1)
    merchants: list[SeedMerchant] = Field(min_length=1)
    terminals: list[SeedTerminal] = Field(default_factory=list)


def load_seed(path: Path) -> Seed:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SeedError(f"{path}: no such seed file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SeedError(f"{path}: not valid JSON ({exc})") from None
    try:
        seed = Seed.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise SeedError(f"{path}: field {field}: {first['msg']}") from None
    merchants = {m.merchant_id for m in seed.merchants}
    for index, terminal in enumerate(seed.terminals):
        if terminal.merchant_id not in merchants:
            raise SeedError(f"{path}: field terminals.{index}.merchant_id: unknown merchant {terminal.merchant_id!r}")
        if terminal.simulator is not None and terminal.passphrase is None:
            raise SeedError(f"{path}: field terminals.{index}.simulator: a simulated terminal needs a passphrase")
    ids = [t.terminal_id for t in seed.terminals]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SeedError(f"{path}: field terminals: duplicate terminal {duplicates[0]}")
    return seed
