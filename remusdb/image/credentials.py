"""The guest databases' application login, generated per image and kept beside it (0600).

The image's databases have no well-known password: each build makes its own for the
application role `remusdb` (not a superuser, owner of its database only); the superusers
(PostgreSQL's `postgres`, MariaDB's `root`) log in only locally inside the guest, by peer or
unix-socket authentication. The tools (drills, benchmarks, the demo) read the password here.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from remusdb.errors import RemusError

FILE = "credentials.json"
USER = DATABASE = "remusdb"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    database: str

    @classmethod
    def generate(cls) -> Credentials:
        # URL-safe characters only: the password goes into SQL literals without quoting
        return cls(USER, secrets.token_urlsafe(24), DATABASE)

    def write(self, directory: Path) -> Path:
        path = Path(directory) / FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"user": self.user, "password": self.password,
                       "database": self.database}, f)
            f.write("\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        path = Path(directory) / FILE
        try:
            d = json.loads(path.read_text())
            return cls(str(d["user"]), str(d["password"]), str(d["database"]))
        except FileNotFoundError:
            raise RemusError(f"{path} not found: the image's database login is kept there "
                             "(rebuild the image: 'remusdb image build --rebuild')") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RemusError(f"{path} unreadable: {e}") from None
